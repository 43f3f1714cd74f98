"""The users service's command line: serve, migrate, and the admin commands."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Sequence

from servicekit.cli import Command, run_service
from servicekit.database import Database, create_engine
from servicekit.errors import NotFound
from servicekit.migrations import check_at_head
from servicekit.pagination import PageTokens
from users_service.accounts import Accounts
from users_service.migrations import MIGRATIONS
from users_service.passwords import PasswordHasher
from users_service.policy import Role
from users_service.repository import UsersRepository
from users_service.server import serve
from users_service.settings import UsersSettings


async def set_role(settings: UsersSettings, email: str, role: Role) -> int:
    """Give the live account of `email` a role; exit 1 with a message if there is none."""
    engine = create_engine(settings, application_name="tandem-users-cli")
    # The hasher is never used here; one worker keeps it cheap.
    hasher = PasswordHasher(
        memory_kib=settings.argon2_memory_kib, time_cost=1, parallelism=1, workers=1
    )
    try:
        await check_at_head(engine, MIGRATIONS)
        # Nothing is listed here: page tokens are never made.
        unused_pages = PageTokens(secrets.token_bytes(32))
        accounts = Accounts(UsersRepository(Database(engine, what="users")), hasher, unused_pages)
        try:
            user = await accounts.set_role(email, role)
        except NotFound:
            sys.stderr.write(f"users_service: no live account has the email {email!r}\n")
            return 1
    finally:
        hasher.close()
        await engine.dispose()
    ended = " (its sessions have ended)" if role is Role.USER else ""
    sys.stdout.write(f"{user.email} ({user.id}) is now {role.value}{ended}\n")
    return 0


async def grant_admin(settings: UsersSettings, email: str) -> int:
    return await set_role(settings, email, Role.ADMIN)


async def revoke_admin(settings: UsersSettings, email: str) -> int:
    return await set_role(settings, email, Role.USER)


COMMANDS: dict[str, Command[UsersSettings]] = {
    "grant-admin": Command(
        "make the account of EMAIL an admin (it takes effect at its next login or refresh)",
        ("EMAIL",),
        grant_admin,
    ),
    "revoke-admin": Command(
        "make the account of EMAIL an ordinary user again, ending its sessions",
        ("EMAIL",),
        revoke_admin,
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_service(
        argv,
        prog="users_service",
        settings_class=UsersSettings,
        serve=serve,
        migrations=MIGRATIONS,
        commands=COMMANDS,
    )
