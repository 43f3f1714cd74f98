"""`python -m users_service [serve|migrate]`."""

from servicekit.environment import not_installed

try:
    from users_service.cli import main
except ModuleNotFoundError as missing:
    raise not_installed("users_service", missing) from None

raise SystemExit(main())
