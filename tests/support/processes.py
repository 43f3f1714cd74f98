"""Real service processes for tests: `python -m` commands on tests/support/harness.py.

What the tests add to the harness: every child runs this interpreter, and its
environment holds the tests' signing key and the gateway account's secret unless the
test says otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.harness import Child, child_env, run
from tests.support.keys import signing_key_file
from tests.support.tokens import GATEWAY_SCOPES, GATEWAY_SECRET


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any Tandem setting, plus `extra`.

    A users service signs with the tests' key unless `extra` says otherwise, so that no
    test process generates a development key under the checkout's ./data.
    """
    env = child_env()
    if not any(k.startswith("USERS_TOKEN_") for k in extra):
        env["USERS_TOKEN_SIGNING_KEY_FILE"] = str(signing_key_file())
    # A gateway holds the secret of the tests' gateway account (migrate_users makes it;
    # processes that migrate for themselves run `create_gateway_account`).
    if not any(k.startswith("GATEWAY_CLIENT_SECRET") for k in extra):
        env["GATEWAY_CLIENT_SECRET"] = GATEWAY_SECRET
    env.update(extra)
    return env


async def create_gateway_account(users_env: Mapping[str, str], directory: Path) -> dict[str, str]:
    """The gateway's service account, made as `make run` makes it (the real command);
    the gateway settings that point at its secret."""
    secret_file = directory / "gateway-client-secret"
    code, output = await run_command(
        [
            "-m",
            "users_service",
            "create-service-account",
            "gateway",
            "--scope",
            ",".join(sorted(GATEWAY_SCOPES)),
            "--secret-file",
            str(secret_file),
        ],
        users_env,
    )
    assert code == 0, output
    return {"GATEWAY_CLIENT_SECRET_FILE": str(secret_file)}


class ServiceProcess(Child):
    """`python args...` with `clean_env(env)`, its output lines collected and awaitable."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: str | None = None):
        super().__init__([sys.executable, *args], clean_env(env), cwd, name=" ".join(args))


async def run_command(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 60
) -> tuple[int, str]:
    """Run `python args...` to completion; its exit code and combined output."""
    return await run([sys.executable, *args], clean_env(env), timeout=timeout)
