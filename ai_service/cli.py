"""The ai service's command line."""

from __future__ import annotations

from collections.abc import Sequence

from ai_service.migrations import MIGRATIONS
from ai_service.server import serve
from ai_service.settings import AiSettings
from servicekit.cli import run_service


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        argv,
        prog="ai_service",
        settings_class=AiSettings,
        serve=serve,
        migrations=MIGRATIONS,
        # The anthropic SDK's span of each provider call joins the analysis' trace.
        api_spans=True,
    )
