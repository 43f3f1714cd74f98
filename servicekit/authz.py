"""The parts of an authorisation policy: who calls (`Caller`) and who may act (`Rule`).

Each service declares its one policy - a table of its actions, each with the `Rule`
saying who may take it - in its own `policy` module, and asks `allowed` or
`authorize` before it touches data. A caller is an account (a user's token, acting
for its subject, with a role) or a service account (a client-credentials token,
acting by its scopes); an admin is an account with the admin role.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field

from servicekit.errors import PermissionDenied


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: an account (with its session) or a service account."""

    user_id: uuid.UUID | None
    role: Role | None
    session_id: uuid.UUID | None
    # A service account's name and scopes; None and empty for an account.
    service: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    # The bearer token the call came with, to ask another service with on its behalf.
    token: str = field(default="", repr=False, compare=False)

    @classmethod
    def account(
        cls, user_id: uuid.UUID, role: Role, session_id: uuid.UUID, *, token: str = ""
    ) -> Caller:
        return cls(user_id=user_id, role=role, session_id=session_id, token=token)

    @classmethod
    def service_account(cls, name: str, scopes: frozenset[str], *, token: str = "") -> Caller:
        return cls(
            user_id=None, role=None, session_id=None, service=name, scopes=scopes, token=token
        )

    @property
    def is_service(self) -> bool:
        return self.service is not None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may take an action: the owner of what it acts on, an admin, a service with
    `scope`."""

    owner: bool = False
    admin: bool = False
    scope: str | None = None


def allowed(caller: Caller, rule: Rule, owner: uuid.UUID | None = None) -> bool:
    """Whether `rule` lets `caller` act on what `owner` owns (None: nobody's)."""
    if caller.is_service:
        return rule.scope is not None and rule.scope in caller.scopes
    if rule.owner and owner is not None and owner == caller.user_id:
        return True
    return rule.admin and caller.is_admin


def authorize(
    caller: Caller,
    rule: Rule,
    owner: uuid.UUID | None,
    *,
    verb: str,
    noun: str,
    one: str,
    owner_word: str,
    owner_reason: str,
) -> None:
    """Return if `rule` lets `caller` act; else PermissionDenied saying who may.

    Messages read "only an admin may <verb> <noun>" ("delete accounts"), or "only
    <owner_word> may <verb> <one>" ("... the account itself may delete this account")
    when the owner may; `owner_reason` is the reason of a refused non-owner.
    """
    if allowed(caller, rule, owner):
        return
    if caller.is_service or not (rule.owner or rule.admin):
        raise PermissionDenied(
            f"only a service with the {rule.scope} scope may {verb} {noun}",
            reason="SCOPE_REQUIRED",
            metadata={"scope": str(rule.scope)},
        )
    if not rule.owner:
        raise PermissionDenied(f"only an admin may {verb} {noun}", reason="ADMIN_REQUIRED")
    who = f"{owner_word} or an admin" if rule.admin else owner_word
    raise PermissionDenied(f"only {who} may {verb} {one}", reason=owner_reason)
