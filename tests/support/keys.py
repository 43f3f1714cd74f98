"""Token signing keys for tests: made once per test process, in a temporary directory."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from users_service.signing_keys import private_key_pem, public_key_pem

_DIRECTORY = tempfile.TemporaryDirectory(prefix="tandem-test-keys-")


def write_key(name: str, key: Ed25519PrivateKey | None = None, *, public: bool = False) -> Path:
    """A PEM file of `key` (a new one by default) in the tests' key directory."""
    key = key or Ed25519PrivateKey.generate()
    path = Path(_DIRECTORY.name) / f"{name}.pem"
    path.write_bytes(public_key_pem(key.public_key()) if public else private_key_pem(key))
    return path


@functools.cache
def signing_key() -> Ed25519PrivateKey:
    """The key every users server of this test run signs with."""
    return Ed25519PrivateKey.generate()


@functools.cache
def signing_key_file() -> Path:
    """`signing_key()` as the PEM file the servers read."""
    return write_key("signing", signing_key())
