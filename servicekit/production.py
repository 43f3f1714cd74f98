"""Production mode: `TANDEM_ENV=production` refuses configuration that is only safe locally.

All three processes read it. In production a process does not start - it says, in one
line, every setting at fault - when:

- a gRPC address it serves or calls is not loopback and TLS is off;
- a signing key or a page-token secret would be generated at random (so tokens would
  not survive a restart, or each replica would sign its own);
- a secret is one that appears in the repository (compose's defaults, examples), and so
  is known to everyone who can read it;
- gRPC server reflection is on;
- a token lifetime exceeds the production cap.

Each settings class lists its own problems (`production_problems`); this module holds
what they share.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from typing import Literal

from sqlalchemy.engine import make_url

from servicekit.errors import StartupError

ENV_VARIABLE = "TANDEM_ENV"
Environment = Literal["development", "production"]

# The longest an access token may live in production, whatever is configured.
MAX_TOKEN_LIFETIME_SECONDS = 3600

# Every secret-like value written in this repository (docker-compose.yml's defaults,
# the README's and the manifests' examples): public, so never a secret in production.
# tests/unit/test_production.py checks that every default in those files is listed.
PUBLIC_VALUES = frozenset(
    {
        "tandem-dev-only",
        "dev-only-users-page-token-secret",
        "dev-only-ai-page-token-secret",
        "test-page-token-secret",
    }
)
# The manifests' placeholders (deploy/kubernetes/secrets.yaml): never replaced, if seen.
PLACEHOLDER = "replace-me"


def environment() -> Environment:
    """`TANDEM_ENV`: development (the default) or production; StartupError otherwise."""
    value = os.environ.get(ENV_VARIABLE, "").strip().lower() or "development"
    if value not in ("development", "production"):
        raise StartupError(f"{ENV_VARIABLE} must be development or production, not {value!r}")
    return "production" if value == "production" else "development"


def check(problems: Iterable[str]) -> None:
    """In production, refuse to start when there is any problem (one line naming all)."""
    if environment() != "production":
        return
    found = list(problems)
    if found:
        raise StartupError(f"{ENV_VARIABLE}=production refuses to start: " + "; ".join(found))


def is_loopback(address: str) -> bool:
    """Whether a `host:port` address or gRPC target stays on this machine."""
    target = address
    for scheme in ("dns:///", "ipv4:", "ipv6:", "dns:"):
        target = target.removeprefix(scheme)
    hosts = [part.rsplit(":", 1)[0].strip("[]") for part in target.split(",")]
    return all(_loopback_host(host) for host in hosts)


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_public(secret: str | None) -> bool:
    """Whether `secret` is written somewhere in this repository."""
    if secret is None:
        return False
    folded = secret.casefold()
    return PLACEHOLDER in folded or any(folded == value.casefold() for value in PUBLIC_VALUES)


def url_password(url: str) -> str | None:
    """The password of a database URL, if it has one."""
    password = make_url(url).password
    return None if password is None else str(password)
