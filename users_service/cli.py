"""The users service's command line: serve, migrate, and the admin commands."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from servicekit.cli import Command, Option, run_service
from servicekit.database import Database, create_engine
from servicekit.errors import AlreadyExists, InvalidArgument, NotFound
from servicekit.migrations import check_at_head
from servicekit.pagination import PageTokens
from users_service.accounts import Accounts
from users_service.migrations import MIGRATIONS
from users_service.passwords import PasswordHasher
from users_service.policy import Role, Scope
from users_service.repository import UsersRepository
from users_service.server import serve
from users_service.service_accounts import ServiceAccounts
from users_service.service_accounts_repository import ServiceAccountsRepository
from users_service.settings import UsersSettings


@asynccontextmanager
async def _database(settings: UsersSettings) -> AsyncIterator[Database]:
    """The users database, checked to be at the latest migration."""
    engine = create_engine(settings, application_name="tandem-users-cli")
    try:
        await check_at_head(engine, MIGRATIONS)
        yield Database(engine, what="users")
    finally:
        await engine.dispose()


async def set_role(settings: UsersSettings, email: str, role: Role) -> int:
    """Give the live account of `email` a role; exit 1 with a message if there is none."""
    # The hasher is never used here; one worker keeps it cheap.
    hasher = PasswordHasher(
        memory_kib=settings.argon2_memory_kib, time_cost=1, parallelism=1, workers=1
    )
    try:
        async with _database(settings) as database:
            # Nothing is listed here: page tokens are never made.
            unused_pages = PageTokens(secrets.token_bytes(32))
            accounts = Accounts(UsersRepository(database), hasher, unused_pages)
            try:
                user = await accounts.set_role(email, role)
            except NotFound:
                sys.stderr.write(f"users_service: no live account has the email {email!r}\n")
                return 1
    finally:
        hasher.close()
    ended = " (its sessions have ended)" if role is Role.USER else ""
    sys.stdout.write(f"{user.email} ({user.id}) is now {role.value}{ended}\n")
    return 0


def _service_accounts(database: Database) -> ServiceAccounts:
    # No tokens are issued here, so no signing key is needed (a one-shot job that makes
    # the gateway's account need not see the key).
    return ServiceAccounts(ServiceAccountsRepository(database), None)


async def create_service_account(
    settings: UsersSettings,
    name: str,
    *,
    scope: list[str],
    secret_file: Path | None,
    replace: bool,
) -> int:
    """Make a service account and show its secret once (or write it to `secret_file`).

    With `secret_file`, a file that already holds the account's working secret for
    these scopes is kept as it is, so a start-up script may run this every time.
    """
    scopes = sorted({s for value in scope for s in value.replace(",", " ").split()})
    async with _database(settings) as database:
        accounts = _service_accounts(database)
        held = _read_secret(secret_file) if secret_file is not None else None
        if held is not None and await accounts.holds(name, held, scopes):
            sys.stdout.write(f"service account {name} is unchanged ({secret_file})\n")
            return 0
        try:
            secret = await accounts.create(name, scopes, replace=replace)
        except InvalidArgument as exc:
            problems = "; ".join(f"{v.field} {v.description}" for v in exc.violations)
            sys.stderr.write(f"users_service: {problems}\n")
            return 2
        except AlreadyExists:
            sys.stderr.write(
                f"users_service: a service account {name!r} exists; "
                "--replace gives it a new secret (the old one stops working)\n"
            )
            return 1
    granted = " ".join(scopes) or "(none)"
    if secret_file is None:
        sys.stdout.write(
            f"client_id: {name}\nclient_secret: {secret}\nscope: {granted}\n"
            "The secret is shown this once; only its hash is stored.\n"
        )
    else:
        write_secret(secret_file, secret)
        sys.stdout.write(f"service account {name} ({granted}): secret written to {secret_file}\n")
    return 0


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` readable by its owner only, whole (linked into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    os.replace(partial, path)


async def delete_service_account(settings: UsersSettings, name: str) -> int:
    async with _database(settings) as database:
        deleted = await _service_accounts(database).delete(name)
    if not deleted:
        sys.stderr.write(f"users_service: no service account {name!r}\n")
        return 1
    sys.stdout.write(f"service account {name} is deleted (its tokens end when they expire)\n")
    return 0


async def grant_admin(settings: UsersSettings, email: str) -> int:
    return await set_role(settings, email, Role.ADMIN)


async def revoke_admin(settings: UsersSettings, email: str) -> int:
    return await set_role(settings, email, Role.USER)


SCOPES = ", ".join(scope.value for scope in Scope)

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
    "create-service-account": Command(
        "make a service account NAME and show its client secret once",
        ("NAME",),
        create_service_account,
        options=(
            Option(
                ("--scope",),
                {
                    "action": "append",
                    "required": True,
                    "help": f"what it may do (repeat, or comma-separate): {SCOPES}",
                },
            ),
            Option(
                ("--secret-file",),
                {
                    "type": Path,
                    "help": "write the secret to this file (mode 0600) instead; "
                    "a file holding a working secret is kept",
                },
            ),
            Option(
                ("--replace",),
                {"action": "store_true", "help": "give an existing account a new secret"},
            ),
        ),
    ),
    "delete-service-account": Command(
        "delete the service account NAME", ("NAME",), delete_service_account
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
