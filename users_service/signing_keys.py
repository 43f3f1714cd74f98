"""The keys that sign and verify access tokens (Ed25519), and the JWKS that publishes them.

Exactly one key signs (`USERS_TOKEN_SIGNING_KEY_FILE`, a private key in PEM); every
key in `USERS_TOKEN_VERIFY_KEY_FILES` (private or public PEM) verifies as well, so a
key is rotated in three steps: publish the new key as a verify-only key, switch
signing to it (the old one becomes verify-only), and drop the old one once the
longest access token it signed has expired. A key's id (`kid`) is its RFC 7638
thumbprint, so every replica names the same key alike without being told.

With no signing key configured, one is generated on first start and kept in
`USERS_TOKEN_DEV_KEY_FILE` (under ./data), so a restart does not log everyone out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from servicekit.errors import StartupError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PublicKey:
    kid: str
    key: Ed25519PublicKey

    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": _x(self.key), "kid": self.kid}


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """The key that signs, and every key that verifies (the signing one included)."""

    signing_kid: str
    signing_key: Ed25519PrivateKey
    verifying: tuple[PublicKey, ...]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**k.jwk(), "use": "sig", "alg": "EdDSA"} for k in self.verifying]}


def thumbprint(key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): the key's `kid`."""
    # The required members, in lexicographic order, without whitespace (RFC 7638 §3).
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _x(key)}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def build_signing_keys(signing: Ed25519PrivateKey, verify_only: Sequence[PublicKey]) -> SigningKeys:
    signing_public = PublicKey(thumbprint(signing.public_key()), signing.public_key())
    verifying = {signing_public.kid: signing_public}
    for key in verify_only:
        verifying.setdefault(key.kid, key)
    return SigningKeys(signing_public.kid, signing, tuple(verifying.values()))


def load_signing_keys(
    signing_file: Path | None, verify_files: Sequence[Path], dev_file: Path
) -> SigningKeys:
    """The configured keys; with no signing key, the generated development key."""
    signing = _private_key(signing_file) if signing_file is not None else _dev_key(dev_file)
    return build_signing_keys(signing, [_public_key(path) for path in verify_files])


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _dev_key(path: Path) -> Ed25519PrivateKey:
    if path.exists():
        return _private_key(path)
    key = Ed25519PrivateKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a file of its own, then linked into place: the key file only
        # ever appears complete, and when replicas start at once one link wins and
        # every replica reads that key.
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".users-token-key-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(private_key_pem(key))
                out.flush()
                os.fsync(out.fileno())
            os.link(draft, path)
        except FileExistsError:
            return _private_key(path)
        finally:
            os.unlink(draft)
    except OSError as exc:
        raise StartupError(
            f"cannot write the generated token key {path}: {exc.strerror}; make its "
            "directory writable or set USERS_TOKEN_SIGNING_KEY_FILE"
        ) from None
    log.warning(
        "no token signing key is configured: generated one in %s (set "
        "USERS_TOKEN_SIGNING_KEY_FILE in production)",
        path,
    )
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StartupError(f"cannot read the token key {path}: {exc.strerror}") from None


def _private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):
        raise StartupError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StartupError(f"{path} is not an Ed25519 key (tokens are signed with EdDSA)")
    return key


def _public_key(path: Path) -> PublicKey:
    data = _read(path)
    public: object
    if b"PRIVATE KEY" in data:
        public = _private_key(path).public_key()
    else:
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise StartupError(f"{path} is not a PEM public or private key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise StartupError(f"{path} is not an Ed25519 key (tokens are signed with EdDSA)")
    return PublicKey(thumbprint(public), public)


def _x(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
