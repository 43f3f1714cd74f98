"""TLS and mTLS for the gRPC servers, with certificates that rotate without a restart.

`server_credentials(ServerTls(...))` reads a certificate chain, its key and, for mTLS,
the CA that client certificates must chain to. The files are read again when they
change: cert-manager, a Kubernetes secret mount or a Vault agent replaces them in
place, and connections opened afterwards get the new certificate (open connections
keep the one they were established with).

How: `grpc.dynamic_ssl_server_credentials` takes a fetcher that gRPC calls before
every TLS handshake; it returns a new certificate configuration, or None to keep the
current one. This works on grpc.aio servers as on sync ones (tried with grpcio 1.85
on asyncio and uvloop loops, and tested in tests/integration/test_tls.py): the
handshake runs in gRPC's C core, which calls the fetcher on one of its own threads,
taking the GIL. Hence the fetcher:

- is cheap when nothing changed: three `os.stat` calls and a comparison, no logging;
- is thread-safe (a lock), and never touches the event loop;
- never raises: gRPC would log a traceback per handshake. Files that cannot be used
  (unreadable, or a key that is not the certificate's, as between the two writes of
  a non-atomic rotation) keep the previous certificate serving, with one WARNING per
  change of the files. gRPC would also keep the old certificate on a mismatched key,
  but log an error naming no file; checking first names the files.

Whether clients must present a certificate is fixed when the credentials are made;
the client CA itself rotates with the other files.

`channel_credentials` is the client side, for the health check and the tests only.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from servicekit.errors import StartupError
from tandem_client import ClientTls

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

log = logging.getLogger("servicekit.tls")

# What tells a file changed: a replaced file (os.replace, or a secret mount swapping
# its symlinked directory) has a new inode, a rewritten one a new mtime or size.
_FileStamp = tuple[int, int, int] | None
_Stamps = tuple[_FileStamp, ...]


@dataclass(frozen=True, slots=True)
class ServerTls:
    """The PEM files a TLS server serves with; a `client_ca_file` turns on mTLS."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate issued by `client_ca_file`."""
        return self.client_ca_file is not None

    @property
    def files(self) -> tuple[Path, ...]:
        extra = () if self.client_ca_file is None else (self.client_ca_file,)
        return (self.cert_file, self.key_file, *extra)


class TlsFilesError(StartupError):
    """The TLS files cannot be served: unreadable, not PEM, or a key not the cert's."""


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials for `add_secure_port` that follow changes to `tls`'s files.

    Raises TlsFilesError (one line naming the file) if they cannot be used now.
    """
    reloader = _Reloader(tls)
    return grpc.dynamic_ssl_server_credentials(
        reloader.initial,
        # grpc-stubs forget that the fetcher returns None for "no change", as documented.
        reloader.fetch,  # type: ignore[arg-type]
        require_client_authentication=tls.mutual,
    )


def channel_credentials(
    ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials trusting `ca_file`; with `cert_file` and `key_file`, for mTLS.

    Raises OSError when a file cannot be read. Read once: a client for a long-lived
    channel needs its own reloading (not this helper's job).
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes(),
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )


class _Reloader:
    """Holds the files' last stamps; `fetch` is gRPC's certificate config fetcher."""

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        # Stamped before reading: a file changed mid-read stamps differently next time.
        self._stamps = _stamp(tls)
        self.initial = _load(tls)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamps = _stamp(self._tls)
        with self._lock:
            if stamps == self._stamps:
                return None
            # Recorded whatever the outcome: files that failed are not retried (nor
            # warned about) on every handshake, only when they change again.
            self._stamps = stamps
            try:
                config = _load(self._tls)
            except TlsFilesError as exc:
                log.warning("TLS files changed but cannot be used, serving the old ones: %s", exc)
                return None
            except Exception:
                # A bug here must not reach gRPC, which would log it at every handshake.
                log.exception("reloading the TLS files failed, serving the old ones")
                return None
        log.info("reloaded TLS files: %s", ", ".join(str(path) for path in self._tls.files))
        return config


def _stamp(tls: ServerTls) -> _Stamps:
    stamps: list[_FileStamp] = []
    for path in tls.files:
        try:
            info = os.stat(path)
        except OSError:
            # Missing for a moment mid-rotation: a change too, which _load will report.
            stamps.append(None)
        else:
            stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


def _load(tls: ServerTls) -> grpc.ServerCertificateConfiguration:
    """Read and check the files; TlsFilesError names the one at fault."""
    # Imported here, not at the top: the health check imports this module for
    # channel_credentials and starts every few seconds; importing cryptography is slow.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    cert_pem = _read(tls.cert_file, "certificate")
    key_pem = _read(tls.key_file, "key")
    ca_pem = None if tls.client_ca_file is None else _read(tls.client_ca_file, "client CA")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFilesError(f"TLS certificate {tls.cert_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsFilesError(
            f"TLS key {tls.key_file} is encrypted; gRPC needs an unencrypted key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsFilesError(f"TLS key {tls.key_file} is not a PEM private key") from None
    if _public_der(key.public_key()) != _public_der(chain[0].public_key()):
        raise TlsFilesError(
            f"TLS key {tls.key_file} is not the key of the certificate {tls.cert_file}"
        )
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise TlsFilesError(
                f"TLS client CA {tls.client_ca_file} is not a PEM certificate"
            ) from None
    return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], ca_pem)


def check_client_files(tls: ClientTls | None) -> None:
    """Fail start-up (TlsFilesError, one line) on client TLS files that are no PEM, or
    a key that is not the certificate's: grpc takes any bytes and fails every handshake."""
    if tls is None:
        return
    if tls.cert_file is not None and tls.key_file is not None:
        _load(ServerTls(tls.cert_file, tls.key_file, tls.ca_file))
        return
    from cryptography import x509  # noqa: PLC0415

    try:
        x509.load_pem_x509_certificates(_read(tls.ca_file, "CA"))
    except ValueError:
        raise TlsFilesError(f"TLS CA {tls.ca_file} is not a PEM certificate") from None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def _public_der(public_key: PublicKeyTypes) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
