"""Who may do what to an account: the users service's one declared policy.

Every method of `Accounts` asks `authorize(caller, action, target)` before it touches
data, and `view_of(caller, target)` decides how much of an account a read shows. The
gateway and any other client only map the answer (PERMISSION_DENIED → 403).

    action            the account itself   an admin   a service
    READ_FULL         yes                  yes        yes      (others: public profile)
    LIST              -                    yes        yes
    UPDATE            yes                  -          yes
    CHANGE_PASSWORD   yes                  -          yes
    DELETE            yes                  yes        yes
    UNDELETE          -                    yes        yes

Anyone with a valid token may read any live account as a public profile (`id`, `name`).
The check depends only on who calls and which id they name, never on stored data, so
a refusal says nothing about whether an account exists.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from servicekit.errors import PermissionDenied


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class Relation(enum.Enum):
    """How a caller stands to the account it acts on."""

    OWNER = "the account itself"
    ADMIN = "an admin"
    SERVICE = "a service"


class Action(enum.Enum):
    READ_FULL = "read every field of"
    LIST = "list"
    UPDATE = "change"
    CHANGE_PASSWORD = "change the password of"  # noqa: S105
    DELETE = "delete"
    UNDELETE = "undelete"


_OWNER, _ADMIN, _SERVICE = Relation.OWNER, Relation.ADMIN, Relation.SERVICE

POLICY: Mapping[Action, frozenset[Relation]] = {
    Action.READ_FULL: frozenset({_OWNER, _ADMIN, _SERVICE}),
    Action.LIST: frozenset({_ADMIN, _SERVICE}),
    Action.UPDATE: frozenset({_OWNER, _SERVICE}),
    Action.CHANGE_PASSWORD: frozenset({_OWNER, _SERVICE}),
    Action.DELETE: frozenset({_OWNER, _ADMIN, _SERVICE}),
    Action.UNDELETE: frozenset({_ADMIN, _SERVICE}),
}


class View(enum.Enum):
    PUBLIC = "public"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: an account (with its session) or a trusted service."""

    user_id: uuid.UUID | None
    role: Role | None
    session_id: uuid.UUID | None

    @classmethod
    def service(cls) -> Caller:
        return cls(user_id=None, role=None, session_id=None)

    @classmethod
    def account(cls, user_id: uuid.UUID, role: Role, session_id: uuid.UUID) -> Caller:
        return cls(user_id=user_id, role=role, session_id=session_id)

    @property
    def is_service(self) -> bool:
        return self.user_id is None

    def relations(self, target: uuid.UUID | None) -> frozenset[Relation]:
        if self.is_service:
            return frozenset({_SERVICE})
        found = set()
        if target is not None and target == self.user_id:
            found.add(_OWNER)
        if self.role is Role.ADMIN:
            found.add(_ADMIN)
        return frozenset(found)


def allowed(caller: Caller, action: Action, target: uuid.UUID | None = None) -> bool:
    return bool(caller.relations(target) & POLICY[action])


def authorize(caller: Caller, action: Action, target: uuid.UUID | None = None) -> None:
    """Return if the policy lets `caller` do `action` to `target`; PermissionDenied if not."""
    if allowed(caller, action, target):
        return
    admins_may = _ADMIN in POLICY[action]
    if admins_may and _OWNER not in POLICY[action]:
        raise PermissionDenied(
            f"only an admin may {action.value} accounts", reason="ADMIN_REQUIRED"
        )
    if admins_may:
        message = f"only the account itself or an admin may {action.value} it"
    else:
        message = f"only the account itself may {action.value} it"
    raise PermissionDenied(message, reason="NOT_ACCOUNT_OWNER")


def view_of(caller: Caller, target: uuid.UUID) -> View:
    return View.FULL if allowed(caller, Action.READ_FULL, target) else View.PUBLIC
