"""`python -m ai_service [serve|migrate]`."""

from ai_service.cli import main

raise SystemExit(main())
