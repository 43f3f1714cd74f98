"""`python -m ai_service [serve|migrate]`."""

from servicekit.environment import not_installed

try:
    from ai_service.cli import main
except ModuleNotFoundError as missing:
    raise not_installed("ai_service", missing) from None

raise SystemExit(main())
