"""The gateway benchmark's baseline: one FastAPI + SQLAlchemy app doing the gateway's work itself.

It is what a user would otherwise build instead of gateway -> users service -> PostgreSQL,
and it serves `GET /v1/users/{id}` the way the gateway does, in-process:

- the bearer JWT is checked with PyJWT exactly as `gateway.auth.TokenService` checks it
  (algorithm, secret, issuer, audience, expiry, the same required claims), and a token
  that passed is remembered until it expires, as the gateway remembers it;
- the caller's account must be live (not soft-deleted); a live answer is remembered for
  MONOLITH_AUTH_CACHE_SECONDS, as the gateway's `LivenessCache` remembers the users
  service's answer;
- the account is read by primary key with SQLAlchemy Core on an async engine (asyncpg):
  the statement the users service runs, on an autocommit connection as it reads;
- the body is the gateway's JSON (`id`, `email`, `name`, `created_at`, `updated_at`) made
  by orjson, with the same ETag header.

Served by the benchmark as

    uvicorn bench._monolith:app --workers 2 --loop uvloop --http httptools

with its settings in the environment: MONOLITH_DATABASE_URL (postgresql+asyncpg://…),
MONOLITH_JWT_SECRET, and optionally MONOLITH_JWT_ISSUER, MONOLITH_JWT_AUDIENCE,
MONOLITH_JWT_ALGORITHM, MONOLITH_AUTH_CACHE_SECONDS, MONOLITH_POOL_SIZE,
MONOLITH_AUTOCOMMIT (default true) and MONOLITH_TOKEN_MEMO (default true).
`GET /healthz` answers the worker's pid, so the benchmark can tell both workers are up.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, cast

import jwt
import orjson
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Uuid,
    bindparam,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

metadata = MetaData()
users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", String(254)),
    Column("name", String(100)),
    Column("create_time", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True)),
    Column("delete_time", DateTime(timezone=True)),
    Column("revision", Integer),
)

_LIVE = users.c.delete_time.is_(None)
# Built once, as the users service builds its statements: the comparison is of the two
# architectures, not of building a statement on every request.
GET_USER = select(
    users.c.id,
    users.c.email,
    users.c.name,
    users.c.create_time,
    users.c.update_time,
    users.c.revision,
).where(users.c.id == bindparam("id"), _LIVE)
IS_LIVE = select(users.c.id).where(users.c.id == bindparam("id"), _LIVE)

_REQUIRED_CLAIMS = ["sub", "iat", "exp", "iss", "aud", "jti"]
_MAX_REMEMBERED = 100_000


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    database_url: str
    jwt_secret: str
    jwt_issuer: str
    jwt_audience: str
    jwt_algorithm: str
    auth_cache_seconds: float
    pool_size: int
    autocommit: bool
    token_memo: bool

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env["MONOLITH_DATABASE_URL"],
            jwt_secret=env["MONOLITH_JWT_SECRET"],
            jwt_issuer=env.get("MONOLITH_JWT_ISSUER", "tandem-gateway"),
            jwt_audience=env.get("MONOLITH_JWT_AUDIENCE", "tandem-api"),
            jwt_algorithm=env.get("MONOLITH_JWT_ALGORITHM", "HS256"),
            auth_cache_seconds=float(env.get("MONOLITH_AUTH_CACHE_SECONDS", "2")),
            pool_size=int(env.get("MONOLITH_POOL_SIZE", "10")),
            autocommit=_flag("MONOLITH_AUTOCOMMIT", True),
            token_memo=_flag("MONOLITH_TOKEN_MEMO", True),
        )


class Tokens:
    """Checks bearer tokens; remembers the ones that passed until they expire."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._memo = settings.token_memo
        self._verified: dict[str, tuple[str, float]] = {}

    def subject(self, token: str) -> str:
        known = self._verified.get(token)
        if known is not None:
            subject, expires_at = known
            if time.time() < expires_at:
                return subject
            del self._verified[token]
            raise _unauthorized("the access token has expired")
        s = self._settings
        try:
            claims = jwt.decode(
                token,
                s.jwt_secret,
                algorithms=[s.jwt_algorithm],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the access token has expired") from None
        except jwt.PyJWTError:
            raise _unauthorized("the access token is invalid") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise _unauthorized("the access token is invalid")
        if self._memo:
            if len(self._verified) >= _MAX_REMEMBERED:
                self._verified.clear()
            self._verified[token] = (subject, float(claims["exp"]))
        return subject


class Liveness:
    """Accounts recently found live, each for `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._until: dict[str, float] = {}

    def is_live(self, user_id: str) -> bool:
        until = self._until.get(user_id)
        return until is not None and time.monotonic() < until

    def mark_live(self, user_id: str) -> None:
        if self._ttl <= 0:
            return
        if len(self._until) >= _MAX_REMEMBERED:
            self._until.clear()
        self._until[user_id] = time.monotonic() + self._ttl


@dataclass(frozen=True)
class State:
    engine: AsyncEngine
    tokens: Tokens
    liveness: Liveness


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = Settings.from_env()
    # Per worker, on its own loop: uvicorn starts each worker as a fresh process.
    engine = create_async_engine(
        settings.database_url,
        pool_size=settings.pool_size,
        max_overflow=0,
        **({"isolation_level": "AUTOCOMMIT"} if settings.autocommit else {}),
    )
    app.state.monolith = State(engine, Tokens(settings), Liveness(settings.auth_cache_seconds))
    try:
        yield
    finally:
        await engine.dispose()


app = FastAPI(title="Tandem monolith (benchmark baseline)", lifespan=lifespan)


def _state(request: Request) -> State:
    return cast(State, request.app.state.monolith)


async def current_user(request: Request) -> str:
    """The caller's user id: a valid bearer token whose account is still live."""
    state = _state(request)
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("this route needs a bearer token (Authorization: Bearer …)")
    subject = state.tokens.subject(token)
    if not state.liveness.is_live(subject):
        try:
            subject_id = uuid.UUID(subject)
        except ValueError:
            raise _unauthorized("the account of this access token no longer exists") from None
        async with state.engine.connect() as connection:
            found = (await connection.execute(IS_LIVE, {"id": subject_id})).first()
        if found is None:
            raise _unauthorized("the account of this access token no longer exists")
        state.liveness.mark_live(subject)
    return subject


CurrentUser = Annotated[str, Depends(current_user)]


def etag(user_id: uuid.UUID, revision: int) -> str:
    """The users service's ETag of an account version, quoted as the gateway sends it."""
    digest = hashlib.blake2b(f"{user_id}:{revision}".encode(), digest_size=8)
    return f'"{digest.hexdigest()}"'


@app.get("/v1/users/{id}")
async def get_user(
    id: Annotated[uuid.UUID, Path()], caller: CurrentUser, request: Request
) -> Response:
    async with _state(request).engine.connect() as connection:
        row = (await connection.execute(GET_USER, {"id": id})).first()
    if row is None:
        raise HTTPException(404, f"user {id} not found")
    body: dict[str, Any] = {
        # asyncpg's own UUID class, which orjson does not know.
        "id": str(row.id),
        "email": row.email,
        "name": row.name,
        "created_at": row.create_time,
        "updated_at": row.update_time,
    }
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        media_type="application/json",
        headers={"ETag": etag(row.id, row.revision)},
    )


@app.get("/healthz")
async def healthz() -> Response:
    return Response(
        orjson.dumps({"status": "ok", "pid": os.getpid()}), media_type="application/json"
    )
