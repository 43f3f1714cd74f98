"""`python -m users_service` (or ai_service) on a Python without the project's packages
says to use the project's environment, instead of `No module named 'grpc'`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("module", ["users_service", "ai_service"])
def test_a_python_without_the_packages_is_told_to_use_the_venv(module: str) -> None:
    # -S: no site-packages, as a system python without the project's dependencies;
    # the checkout itself is importable from the working directory.
    done = subprocess.run(
        [sys.executable, "-S", "-m", module], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert f"Run `.venv/bin/python -m {module}`" in done.stderr
    assert "Traceback" not in done.stderr
