"""`python -m users_service [serve|migrate]`."""

from users_service.cli import main

raise SystemExit(main())
