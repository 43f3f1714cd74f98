"""What the users service does: each public method is one RPC's rules, without protobuf."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from servicekit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Violations,
    parse_id,
)
from servicekit.idempotency import IdempotentWrites, RequestKey, key_reused
from servicekit.liveness import Liveness
from servicekit.pagination import Page, PageTokens, keyset_page
from servicekit.throttle import Throttle
from users_service.domain import (
    BAD_CREDENTIALS,
    User,
    check_password,
    email_key,
    login_key,
    normalize_email,
    normalize_name,
    parse_ids,
    resolve_update_mask,
)
from users_service.passwords import PasswordHasher
from users_service.policy import Action, Caller, Role, View, authorize, view_of
from users_service.repository import EmailTaken, UsersRepository
from users_service.throttling import LoginRules, Throttling

log = logging.getLogger(__name__)

# One message for every failed login, so a caller cannot tell which part was wrong.
BAD_LOGIN = "the email or password is incorrect"


@dataclass(frozen=True, slots=True)
class UserChanges:
    """An UpdateUser request: the new values, and which of them the mask selects."""

    id: str
    name: str
    email: str
    etag: str
    mask_paths: list[str]
    # Required to change the email.
    current_password: str = ""


class Accounts:
    def __init__(
        self,
        repository: UsersRepository,
        hasher: PasswordHasher,
        page_tokens: PageTokens,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sessions: Liveness | None = None,
        *,
        sign_ups: IdempotentWrites | None = None,
        throttling: Throttling | None = None,
    ) -> None:
        """`sessions`: what this process remembers of live sessions, told of the ones
        a deletion or a password change ends. `sign_ups`: the request ids of sign-ups
        (kept in the repository's `keys`, for 24 hours unless told). `throttling`: the
        limits on logins and sign-ups (the default rules, in this process, unless told)."""
        self._repository = repository
        self._hasher = hasher
        self._page_tokens = page_tokens
        self._clock = clock
        self._sessions = sessions
        self._sign_ups = sign_ups or IdempotentWrites(repository.keys, clock=clock)
        self._throttling = throttling or Throttling(Throttle.in_process(), LoginRules())

    async def create(
        self,
        *,
        email: str,
        name: str,
        password: str,
        caller: Caller,
        request_id: str = "",
        client: str = "",
    ) -> User:
        """A new account; with `request_id`, the account that an earlier request with
        it made (as it is now), if that request was this one. `client`: the address a
        service's sign-up counts against (users_service.throttling)."""
        authorize(caller, Action.SIGN_UP)
        violations = Violations()
        # The request as sent, less its password, which no fingerprint may hold: a fast
        # hash of it would undo what argon2 does for the stored one.
        key = self._request_key(caller, request_id, email, name, violations=violations)
        email = normalize_email(email, "user.email", violations)
        name = normalize_name(name, "user.name", violations)
        check_password(password, "password", violations)
        violations.check()
        if caller.is_service:  # a sign-up; an admin making an account is not one
            await self._throttling.admit_signup(client)
        return await self._sign_ups.run(
            key,
            write=lambda: self._insert_new(email, name, password, key),
            replay=lambda user_id: self._signed_up(user_id, password),
        )

    async def get(self, user_id: str, caller: Caller) -> tuple[User, View]:
        """A live account, and how much of it the caller may see."""
        parsed = parse_id(user_id)
        user = await self._repository.get(parsed)
        if user is None:
            raise _not_found(parsed)
        return user, view_of(caller, parsed)

    async def get_many(self, user_ids: Sequence[str], caller: Caller) -> list[tuple[User, View]]:
        """Live accounts in the order asked (repeats included); all of them or NotFound."""
        parsed = parse_ids(user_ids)
        found = {user.id: user for user in await self._repository.get_many(set(parsed))}
        missing = next((user_id for user_id in parsed if user_id not in found), None)
        if missing is not None:
            raise _not_found(missing)
        return [(found[user_id], view_of(caller, user_id)) for user_id in parsed]

    async def list(
        self, *, size: int, token: str, show_deleted: bool, caller: Caller
    ) -> Page[User]:
        authorize(caller, Action.LIST)
        return await keyset_page(
            self._page_tokens,
            size=size,
            token=token,
            scope=f"users.list:show_deleted={show_deleted}",
            fetch=lambda after, limit: self._repository.list_page(
                after=after, limit=limit, show_deleted=show_deleted
            ),
            key=lambda user: (user.create_time, user.id),
        )

    async def update(self, changes: UserChanges, caller: Caller) -> User:
        parsed = parse_id(changes.id, field="user.id")
        authorize(caller, Action.UPDATE, parsed)
        populated = [f for f, v in (("name", changes.name), ("email", changes.email)) if v]
        fields = resolve_update_mask(changes.mask_paths, populated)
        violations = Violations()
        values: dict[str, str] = {}
        if "name" in fields:
            values["name"] = normalize_name(changes.name, "user.name", violations)
        if "email" in fields:
            values["email"] = normalize_email(changes.email, "user.email", violations)
            values["email_key"] = email_key(values["email"])
            if not changes.current_password and not caller.is_service:
                violations.add("current_password", "is required to change the email")
        violations.check()
        if "email" in fields and not caller.is_service:
            await self._check_password(parsed, changes.current_password)

        expected_revision = None
        if changes.etag:
            current = await self._repository.get(parsed)
            if current is None:
                raise _not_found(parsed)
            if current.etag != changes.etag:
                raise _etag_mismatch(parsed)
            expected_revision = current.revision
        try:
            updated = await self._repository.update(
                parsed, values, now=self._clock(), expected_revision=expected_revision
            )
        except EmailTaken:
            raise _email_taken() from None
        if updated is None:
            if expected_revision is not None and await self._repository.get(parsed):
                raise _etag_mismatch(parsed)
            raise _not_found(parsed)
        return updated

    async def delete(self, user_id: str, caller: Caller) -> User:
        parsed = parse_id(user_id)
        authorize(caller, Action.DELETE, parsed)
        deleted = await self._repository.set_deleted(parsed, deleted=True, now=self._clock())
        if deleted is None:
            raise _not_found(parsed)
        if self._sessions is not None:
            self._sessions.forget_user(str(parsed))
        return deleted

    async def undelete(self, user_id: str, caller: Caller) -> User:
        parsed = parse_id(user_id)
        authorize(caller, Action.UNDELETE, parsed)
        try:
            restored = await self._repository.set_deleted(parsed, deleted=False, now=self._clock())
        except EmailTaken:
            raise AlreadyExists(
                "the account's email now belongs to another account",
                reason="EMAIL_TAKEN",
                metadata={"id": str(parsed)},
            ) from None
        if restored is None:
            if await self._repository.get(parsed) is not None:
                raise FailedPrecondition(
                    f"user {parsed} is not deleted",
                    reason="USER_NOT_DELETED",
                    metadata={"id": str(parsed)},
                )
            raise _not_found(parsed)
        return restored

    async def change_password(
        self, user_id: str, *, current: str, new: str, caller: Caller
    ) -> None:
        """Replace the password; every session of the account but the caller's ends."""
        parsed = parse_id(user_id)
        authorize(caller, Action.CHANGE_PASSWORD, parsed)
        violations = Violations()
        if not current:
            violations.add("current_password", "is required")
        check_password(new, "new_password", violations)
        violations.check()
        found = await self._repository.get_live_with_hash(parsed)
        if found is None:
            raise _not_found(parsed)
        _, old_hash = found
        if not await self._hasher.verify(old_hash, current):
            raise _wrong_password()
        new_hash = await self._hasher.hash(new)
        if not await self._repository.replace_password_hash(
            parsed,
            old_hash=old_hash,
            new_hash=new_hash,
            end_sessions_but=caller.session_id,
            now=self._clock(),
        ):
            # Deleted, or its password changed, between our read and our write.
            raise _not_found(parsed)
        if self._sessions is not None:
            keep = str(caller.session_id) if caller.session_id else None
            self._sessions.forget_user(str(parsed), keep=keep)

    async def authenticate(
        self, *, email: str, password: str, caller: Caller, client: str = ""
    ) -> User:
        """The account whose password this is; `client`, the address the attempt counts
        against (users_service.throttling), checked before any hashing."""
        authorize(caller, Action.LOG_IN)
        violations = Violations()
        if not email.strip():
            violations.add("email", "is required")
        if not password:
            violations.add("password", "is required")
        violations.check()
        key = login_key(email)
        with await self._throttling.admit_login(key, client) as attempt:
            # Unknown, deleted and wrong-password all verify one hash and fail alike.
            found = await self._repository.get_live_with_hash_by_email(key)
            verified = await self._hasher.verify(found[1] if found else None, password)
            if found is None or not verified:
                await attempt.failed()
                raise Unauthenticated(BAD_LOGIN, reason=BAD_CREDENTIALS)
            await attempt.succeeded()
        user, password_hash = found
        if self._hasher.needs_rehash(password_hash):
            await self._upgrade_hash(user, password, password_hash)
        return user

    async def set_role(self, email: str, role: Role) -> User:
        """Make the account of `email` an admin or an ordinary user (the CLI's job)."""
        user = await self._repository.set_role(login_key(email), role.value, now=self._clock())
        if user is None:
            raise NotFound("no live account has this email", reason="USER_NOT_FOUND")
        return user

    async def _insert_new(
        self, email: str, name: str, password: str, key: RequestKey | None
    ) -> User:
        now = self._clock()
        user = User(
            id=uuid.uuid4(),
            email=email,
            name=name,
            create_time=now,
            update_time=now,
            delete_time=None,
            revision=1,
        )
        password_hash = await self._hasher.hash(password)
        try:
            await self._repository.insert(
                user,
                email_key=email_key(email),
                password_hash=password_hash,
                key=self._sign_ups.record(key, user.id),
            )
        except EmailTaken:
            raise _email_taken() from None
        return user

    def _request_key(
        self, caller: Caller, request_id: str, email: str, name: str, *, violations: Violations
    ) -> RequestKey | None:
        try:
            return self._sign_ups.key(caller, request_id, "CreateUser", email, name)
        except InvalidArgument as exc:
            for violation in exc.violations:
                violations.add(violation.field, violation.description)
            return None

    async def _signed_up(self, user_id: uuid.UUID, password: str) -> User:
        """The account an earlier sign-up with the same request id made, if it had this
        password too: the password is checked against the account's own hash."""
        found = await self._repository.get_any_with_hash(user_id)
        if found is None:
            raise _not_found(user_id)
        user, password_hash = found
        if not await self._hasher.verify(password_hash, password):
            raise key_reused()
        return user

    async def _check_password(self, user_id: uuid.UUID, password: str) -> None:
        found = await self._repository.get_live_with_hash(user_id)
        if found is None:
            raise _not_found(user_id)
        if not await self._hasher.verify(found[1], password):
            raise _wrong_password()

    async def _upgrade_hash(self, user: User, password: str, old_hash: str) -> None:
        try:
            new_hash = await self._hasher.hash(password)
        except ResourceExhausted:  # the hash queue is full: the login stands, upgrade later
            return
        # Losing this race (a concurrent password change) is fine: theirs wins.
        if await self._repository.replace_password_hash(
            user.id, old_hash=old_hash, new_hash=new_hash
        ):
            log.info("upgraded the password hash of user %s to the current parameters", user.id)


def _not_found(user_id: uuid.UUID) -> NotFound:
    return NotFound(f"no user {user_id}", reason="USER_NOT_FOUND", metadata={"id": str(user_id)})


def _email_taken() -> AlreadyExists:
    return AlreadyExists("an account with this email already exists", reason="EMAIL_TAKEN")


def _etag_mismatch(user_id: uuid.UUID) -> Aborted:
    return Aborted(
        f"user {user_id} changed since the etag was read; get it again and retry",
        reason="ETAG_MISMATCH",
        metadata={"id": str(user_id)},
    )


def _wrong_password() -> InvalidArgument:
    # A typo, not an expired credential: 400 on the field, never 401, which clients
    # read as "log in again".
    return InvalidArgument.field("current_password", "is incorrect", reason="WRONG_PASSWORD")
