"""Who may do what to an account: the users service's one declared policy.

Every call is authenticated first (`users_service.callers`): its caller is an account
(a user's token, with a live session) or a service account (a client-credentials
token, with scopes). Then each domain method asks `authorize(caller, action, target)`
before it touches data, and `view_of(caller, target)` decides how much of an account a
read shows. The gateway and any other client only map the answer.

    action            the account itself   an admin   a service with scope
    SIGN_UP           -                    yes        users.signup
    LOG_IN            -                    -          users.login
    READ_FULL         yes                  yes        users.read   (others: public profile)
    LIST              -                    yes        users.read
    UPDATE            yes                  -          users.write
    CHANGE_PASSWORD   yes                  -          users.write
    DELETE            yes                  yes        users.write
    UNDELETE          -                    yes        users.write
    READ_SESSIONS     yes                  yes        sessions.read

    method                            action
    UsersService/CreateUser           SIGN_UP
    UsersService/AuthenticateUser     LOG_IN
    UsersService/GetUser, BatchGet…   READ_FULL, else the public profile
    UsersService/ListUsers            LIST
    UsersService/UpdateUser           UPDATE
    UsersService/ChangePassword       CHANGE_PASSWORD
    UsersService/DeleteUser           DELETE
    UsersService/UndeleteUser         UNDELETE
    AuthService/IssueToken            password, refresh_token grants: LOG_IN;
                                      client_credentials: no token (the grant is one)
    AuthService/RevokeToken           any caller (holding a token is the right to end it)
    AuthService/BatchGetSessions      READ_SESSIONS
    AuthService/GetJsonWebKeySet      no token: the keys that verify tokens are public

Any authenticated caller may read any live account as a public profile (`id`,
`name`). The check depends only on who calls and which id they name, never on stored
data, so a refusal says nothing about whether an account exists.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping

from servicekit import authz
from servicekit.authz import Caller, Role, Rule

__all__ = ["POLICY", "Action", "Caller", "Role", "Scope", "View", "allowed", "authorize"]


class Scope(enum.StrEnum):
    """What a service account may be granted (`create-service-account --scope`).

    The users service is the authorisation server of the whole system, so the other
    services' scopes are listed here too.
    """

    USERS_SIGNUP = "users.signup"
    USERS_LOGIN = "users.login"
    USERS_READ = "users.read"
    USERS_WRITE = "users.write"
    SESSIONS_READ = "sessions.read"
    ANALYSES_READ = "analyses.read"
    ANALYSES_WRITE = "analyses.write"


class Action(enum.Enum):
    # Each reads as "may <value> accounts" (or "... this account").
    SIGN_UP = "create"
    LOG_IN = "check the passwords of"
    READ_FULL = "read every field of"
    LIST = "list"
    UPDATE = "change"
    CHANGE_PASSWORD = "change the password of"  # noqa: S105
    DELETE = "delete"
    UNDELETE = "undelete"
    READ_SESSIONS = "read the sessions of"


POLICY: Mapping[Action, Rule] = {
    Action.SIGN_UP: Rule(admin=True, scope=Scope.USERS_SIGNUP),
    Action.LOG_IN: Rule(scope=Scope.USERS_LOGIN),
    Action.READ_FULL: Rule(owner=True, admin=True, scope=Scope.USERS_READ),
    Action.LIST: Rule(admin=True, scope=Scope.USERS_READ),
    Action.UPDATE: Rule(owner=True, scope=Scope.USERS_WRITE),
    Action.CHANGE_PASSWORD: Rule(owner=True, scope=Scope.USERS_WRITE),
    Action.DELETE: Rule(owner=True, admin=True, scope=Scope.USERS_WRITE),
    Action.UNDELETE: Rule(admin=True, scope=Scope.USERS_WRITE),
    Action.READ_SESSIONS: Rule(owner=True, admin=True, scope=Scope.SESSIONS_READ),
}


class View(enum.Enum):
    PUBLIC = "public"
    FULL = "full"


def allowed(caller: Caller, action: Action, target: uuid.UUID | None = None) -> bool:
    return authz.allowed(caller, POLICY[action], target)


def authorize(caller: Caller, action: Action, target: uuid.UUID | None = None) -> None:
    """Return if the policy lets `caller` do `action` to `target`; PermissionDenied if not."""
    authz.authorize(
        caller,
        POLICY[action],
        target,
        verb=action.value,
        noun="accounts",
        one="this account",
        owner_word="the account itself",
        owner_reason="NOT_ACCOUNT_OWNER",
    )


def view_of(caller: Caller, target: uuid.UUID) -> View:
    return View.FULL if allowed(caller, Action.READ_FULL, target) else View.PUBLIC
