"""What `python -m <part>` says when it runs on a Python without the project's packages.

A system `python` instead of `.venv/bin/python` fails on the first third-party import
(`No module named 'grpc'`), which says nothing of the cause. Imports only the standard
library, so it can run before anything else is imported.
"""

from __future__ import annotations

import sys

__all__ = ["not_installed"]


def not_installed(module: str, missing: ModuleNotFoundError) -> SystemExit:
    """The exit for `python -m <module>` whose import of a dependency failed."""
    return SystemExit(
        f"{module}: cannot import {missing.name!r}: {sys.executable} lacks the project's "
        f"packages. Run `.venv/bin/python -m {module}` at the checkout (`make run` "
        "creates .venv), or install the project into this environment (`pip install .`)."
    )
