"""TLS and mTLS for a client channel, from PEM files that may rotate.

`ClientTls(ca_file)` trusts the servers whose certificate chains to `ca_file`; with
`cert_file` and `key_file` the client presents its own certificate too (mTLS);
`server_name` checks the server's certificate for that name rather than the target's
host (an address reached by IP, a tunnel).

Client certificates are short-lived and replaced in place (cert-manager, a Kubernetes
secret mount, a Vault agent), but grpc reads channel credentials once, when the channel
is made. So `Connection` compares the files' `stamp()` now and then and, when it
changed, makes a new channel from `channel_credentials()`: see connection.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

# What tells a file changed: a replaced file (os.replace, or a secret mount swapping
# its symlinked directory) has a new inode, a rewritten one a new mtime or size.
FileStamp = tuple[int, int, int] | None
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"


@dataclass(frozen=True, slots=True)
class ClientTls:
    """The PEM files a client channel trusts and, for mTLS, presents."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("ClientTls needs both cert_file and key_file, or neither")

    @property
    def files(self) -> tuple[Path, ...]:
        if self.cert_file is None or self.key_file is None:
            return (self.ca_file,)
        return (self.ca_file, self.cert_file, self.key_file)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Credentials made from the files as they are now (raises OSError if unreadable)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=None if self.key_file is None else self.key_file.read_bytes(),
            certificate_chain=None if self.cert_file is None else self.cert_file.read_bytes(),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """The channel options the credentials need: the name to verify, if given."""
        return [] if self.server_name is None else [(TARGET_NAME_OVERRIDE, self.server_name)]

    def stamp(self) -> tuple[FileStamp, ...]:
        """(mtime_ns, size, inode) of each file, None for one missing: changes when any does."""
        return tuple(_stamp(path) for path in self.files)


def _stamp(path: Path) -> FileStamp:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
