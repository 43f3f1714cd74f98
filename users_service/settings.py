"""Settings of the users service, from `USERS_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from servicekit import production
from servicekit.settings import OptionalPath, ServiceSettings, ThrottleSettings
from users_service import passwords
from users_service.throttling import LoginRules

_RULES = LoginRules()


class UsersSettings(ServiceSettings, ThrottleSettings):
    model_config = SettingsConfigDict(env_prefix="USERS_", extra="ignore", frozen=True)

    addr: str = "127.0.0.1:50051"
    database_url: str = "sqlite+aiosqlite:///./data/users.db"

    # argon2id cost (OWASP's second recommendation: 19 MiB, 2 passes, 1 lane). Raising
    # them upgrades each stored hash at its owner's next successful login.
    argon2_memory_kib: int = Field(default=19_456, ge=8 * 1024)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Threads that hash passwords, off the event loop. Fewer threads than cores keeps a
    # burst of logins from starving the loop that serves every other call.
    password_hash_workers: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 2) - 1), ge=1
    )
    # Hashes that may wait for a thread; past them a call is RESOURCE_EXHAUSTED at once.
    password_hash_queue: int = Field(default=passwords.MAX_WAITING, ge=0)

    # Limits on guessing passwords and on sign-ups (users_service.throttling), counted
    # in Redis when redis_url is set (servicekit.settings.ThrottleSettings).
    login_window_seconds: int = Field(default=_RULES.window_seconds, ge=1)
    login_failures_per_pair: int = Field(default=_RULES.failures_per_pair, ge=1)
    login_failures_per_address: int = Field(default=_RULES.failures_per_address, ge=1)
    login_failures_per_account: int = Field(default=_RULES.failures_per_account, ge=1)
    login_free_failures: int = Field(default=_RULES.free_failures, ge=0)
    login_delay_seconds: float = Field(default=_RULES.delay_seconds, ge=0)
    # Below the gateway's users deadline (5 s), with room for the hash.
    login_max_delay_seconds: float = Field(default=_RULES.max_delay_seconds, ge=0, le=10)
    signups_per_address: int = Field(default=_RULES.signups_per_address, ge=1)
    signup_window_seconds: int = Field(default=_RULES.signup_window_seconds, ge=1)
    # Logins of one address admitted and not yet answered, in this process.
    logins_in_progress_per_address: int = Field(default=_RULES.in_progress_per_address, ge=1)

    # Access tokens (users_service.tokens) and the keys that sign them
    # (users_service.signing_keys). The issuer and audience must match what the
    # gateway and the other services verify.
    token_issuer: str = Field(default="tandem-users", min_length=1)
    token_audience: str = Field(default="tandem-api", min_length=1)
    access_token_ttl_seconds: int = Field(default=900, ge=30, le=24 * 3600)
    # What this service's own verifier accepts as `exp - iat`, whatever the signature.
    token_max_lifetime_seconds: int = Field(default=3600, ge=30, le=24 * 3600)
    token_signing_key_file: OptionalPath = None
    # Comma-separated PEM files (public or private keys) that verify but do not sign.
    token_verify_key_files: str = ""
    token_dev_key_file: Path = Path("./data/users-token-key.pem")
    # Refresh tokens rotate on every use; each lasts this long unless traded first.
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    # A session ends this long after its login, however often it was refreshed.
    session_max_seconds: int = Field(default=90 * 24 * 3600, ge=60)
    # A rotated refresh token presented again within this many seconds of its rotation
    # gets invalid_grant (a concurrent refresh lost the race, or a client retried after
    # a lost answer); later, it is reuse and ends the session.
    refresh_reuse_grace_seconds: float = Field(default=10.0, ge=0, le=300)
    # How long a session seen live counts as live without reading it again. A session
    # ended by another replica still works here for at most this long; one ended
    # here stops at once.
    session_cache_seconds: float = Field(default=2.0, ge=0, le=300)

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if self.token_signing_key_file is None:
            problems.append(
                "USERS_TOKEN_SIGNING_KEY_FILE is not set (a signing key would be generated)"
            )
        cap = production.MAX_TOKEN_LIFETIME_SECONDS
        for field in ("access_token_ttl_seconds", "token_max_lifetime_seconds"):
            if getattr(self, field) > cap:
                problems.append(f"{self.variable(field)} exceeds {cap} s")
        return problems

    def login_rules(self) -> LoginRules:
        return LoginRules(
            window_seconds=self.login_window_seconds,
            failures_per_pair=self.login_failures_per_pair,
            failures_per_address=self.login_failures_per_address,
            failures_per_account=self.login_failures_per_account,
            free_failures=self.login_free_failures,
            delay_seconds=self.login_delay_seconds,
            max_delay_seconds=self.login_max_delay_seconds,
            signups_per_address=self.signups_per_address,
            signup_window_seconds=self.signup_window_seconds,
            in_progress_per_address=self.logins_in_progress_per_address,
        )

    @property
    def verify_key_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.token_verify_key_files.split(",") if p.strip()]

    @model_validator(mode="after")
    def _check_lifetimes(self) -> UsersSettings:
        if self.access_token_ttl_seconds > self.token_max_lifetime_seconds:
            raise ValueError(
                "USERS_ACCESS_TOKEN_TTL_SECONDS must not exceed USERS_TOKEN_MAX_LIFETIME_SECONDS"
            )
        if self.refresh_token_ttl_seconds > self.session_max_seconds:
            raise ValueError(
                "USERS_REFRESH_TOKEN_TTL_SECONDS must not exceed USERS_SESSION_MAX_SECONDS"
            )
        return self
