"""The gateway benchmark's baseline: one FastAPI + SQLAlchemy app doing the gateway's work itself.

It is what a user would otherwise build instead of gateway -> users service -> PostgreSQL,
and it serves `GET /v1/users/{id}` the way the gateway does, in-process:

- the bearer JWT (signed by the users service with Ed25519) is checked with PyJWT as
  `servicekit.tokens.TokenVerifier` checks it: header `alg` EdDSA and `kid` the RFC 7638
  thumbprint of the configured public key, then the signature, issuer, audience, expiry
  and issue time (30 s leeway), the same required claims (`iss`, `aud`, `sub`, `iat`,
  `exp`, `jti`, `sid`, `role`), a role of `user` or `admin`, and no longer a life than
  MONOLITH_TOKEN_MAX_LIFETIME_SECONDS (3600) from `iat` to `exp`; a token that passed is
  remembered until it expires, as the gateway remembers it;
- the token's session must be live: its row in `sessions` exists, belongs to the token's
  subject, has not ended and has not expired; a live answer is remembered per session
  for MONOLITH_AUTH_CACHE_SECONDS, as the gateway's `SessionCache` remembers the users
  service's answer;
- the account is read by primary key with SQLAlchemy Core on an async engine (asyncpg):
  the statement the users service runs, on an autocommit connection as it reads;
- the body is the gateway's JSON made by orjson: one's own account (any account, for an
  admin) in full (`id`, `email`, `name`, `role`, `created_at`, `updated_at`) with the same
  ETag header; another account as its public profile (`id`, `name`), without an ETag.

Served by the benchmark as

    uvicorn bench._monolith:app --workers 2 --loop uvloop --http httptools

with its settings in the environment: MONOLITH_DATABASE_URL (postgresql+asyncpg://…),
MONOLITH_PUBLIC_KEY_FILE (the users service's Ed25519 public key, PEM), and optionally
MONOLITH_TOKEN_ISSUER (tandem-users), MONOLITH_TOKEN_AUDIENCE (tandem-api),
MONOLITH_TOKEN_MAX_LIFETIME_SECONDS, MONOLITH_AUTH_CACHE_SECONDS, MONOLITH_POOL_SIZE,
MONOLITH_AUTOCOMMIT (default true) and MONOLITH_TOKEN_MEMO (default true).
`GET /healthz` answers the worker's pid, so the benchmark can tell both workers are up.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, cast

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
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
    Column("role", String(16)),
    Column("create_time", DateTime(timezone=True)),
    Column("update_time", DateTime(timezone=True)),
    Column("delete_time", DateTime(timezone=True)),
    Column("revision", Integer),
)
sessions = Table(
    "sessions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid),
    Column("expire_time", DateTime(timezone=True)),
    Column("end_time", DateTime(timezone=True)),
)

# Built once, as the users service builds its statements: the comparison is of the two
# architectures, not of building a statement on every request.
GET_USER = select(
    users.c.id,
    users.c.email,
    users.c.name,
    users.c.role,
    users.c.create_time,
    users.c.update_time,
    users.c.revision,
).where(users.c.id == bindparam("id"), users.c.delete_time.is_(None))
GET_SESSION = select(sessions.c.user_id, sessions.c.expire_time, sessions.c.end_time).where(
    sessions.c.id == bindparam("sid")
)

ALGORITHM = "EdDSA"
ROLES = frozenset({"user", "admin"})
LEEWAY_SECONDS = 30
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "exp", "jti", "sid", "role"]
_MAX_REMEMBERED = 100_000


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in ("1", "true", "yes", "on")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(key: Ed25519PublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256, base64url): the `kid` it signs with."""
    x = _b64(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    # The required members, in lexicographic order, without whitespace (RFC 7638 §3).
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def load_public_key(path: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(FilePath(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key (tokens are signed with EdDSA)")
    return key


@dataclass(frozen=True)
class Settings:
    database_url: str
    public_key: Ed25519PublicKey
    token_issuer: str
    token_audience: str
    token_max_lifetime_seconds: int
    auth_cache_seconds: float
    pool_size: int
    autocommit: bool
    token_memo: bool

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env["MONOLITH_DATABASE_URL"],
            public_key=load_public_key(env["MONOLITH_PUBLIC_KEY_FILE"]),
            token_issuer=env.get("MONOLITH_TOKEN_ISSUER", "tandem-users"),
            token_audience=env.get("MONOLITH_TOKEN_AUDIENCE", "tandem-api"),
            token_max_lifetime_seconds=int(env.get("MONOLITH_TOKEN_MAX_LIFETIME_SECONDS", "3600")),
            auth_cache_seconds=float(env.get("MONOLITH_AUTH_CACHE_SECONDS", "2")),
            pool_size=int(env.get("MONOLITH_POOL_SIZE", "10")),
            autocommit=_flag("MONOLITH_AUTOCOMMIT", True),
            token_memo=_flag("MONOLITH_TOKEN_MEMO", True),
        )


@dataclass(frozen=True, slots=True)
class Caller:
    """What a verified access token says of its bearer."""

    user_id: str
    session_id: str
    role: str
    expires_at: int


class Tokens:
    """Checks bearer tokens; remembers the ones that passed until they expire."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._kid = thumbprint(settings.public_key)
        self._memo = settings.token_memo
        self._verified: dict[str, Caller] = {}

    def caller(self, token: str) -> Caller:
        known = self._verified.get(token)
        if known is not None:
            # Accepted until `exp` plus the leeway, as jwt.decode accepts it.
            if time.time() < known.expires_at + LEEWAY_SECONDS:
                return known
            del self._verified[token]
            raise _unauthorized("the access token has expired")
        caller = self._decode(token)
        if self._memo:
            if len(self._verified) >= _MAX_REMEMBERED:
                self._verified.clear()
            self._verified[token] = caller
        return caller

    def _decode(self, token: str) -> Caller:
        s = self._settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid() from None
        if header.get("alg") != ALGORITHM:
            raise _invalid()
        if header.get("kid") != self._kid:
            raise _unauthorized("the access token's signing key is unknown")
        try:
            claims = jwt.decode(
                token,
                s.public_key,
                algorithms=[ALGORITHM],
                audience=s.token_audience,
                issuer=s.token_issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the access token has expired") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("the access token is meant for another audience") from None
        except jwt.PyJWTError:
            raise _invalid() from None
        issued_at, expires_at = claims["iat"], claims["exp"]
        if not isinstance(issued_at, int) or not isinstance(expires_at, int):
            raise _invalid()
        if expires_at - issued_at > s.token_max_lifetime_seconds:
            raise _unauthorized("the access token claims a longer life than allowed")
        strings = [claims[name] for name in ("sub", "sid", "jti", "role")]
        if not all(isinstance(value, str) and value for value in strings):
            raise _invalid()
        if claims["role"] not in ROLES:
            raise _invalid()
        return Caller(claims["sub"], claims["sid"], claims["role"], expires_at)


class Liveness:
    """Sessions recently found live, each for `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._until: dict[str, float] = {}

    def is_live(self, session_id: str) -> bool:
        until = self._until.get(session_id)
        return until is not None and time.monotonic() < until

    def mark_live(self, session_id: str) -> None:
        if self._ttl <= 0:
            return
        if len(self._until) >= _MAX_REMEMBERED:
            self._until.clear()
        self._until[session_id] = time.monotonic() + self._ttl


@dataclass(frozen=True)
class State:
    engine: AsyncEngine
    tokens: Tokens
    liveness: Liveness


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def _invalid() -> HTTPException:
    return _unauthorized("the access token is invalid")


SESSION_ENDED = "the session of this access token has ended; log in again"


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


async def current_user(request: Request) -> Caller:
    """The caller: a valid bearer token whose session is still live."""
    state = _state(request)
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("this route needs a bearer token (Authorization: Bearer …)")
    caller = state.tokens.caller(token)
    if not state.liveness.is_live(caller.session_id):
        try:
            session_id = uuid.UUID(caller.session_id)
        except ValueError:
            raise _unauthorized(SESSION_ENDED) from None
        async with state.engine.connect() as connection:
            row = (await connection.execute(GET_SESSION, {"sid": session_id})).first()
        if (
            row is None
            or str(row.user_id) != caller.user_id
            or row.end_time is not None
            or row.expire_time <= datetime.now(UTC)
        ):
            raise _unauthorized(SESSION_ENDED)
        state.liveness.mark_live(caller.session_id)
    return caller


CurrentUser = Annotated[Caller, Depends(current_user)]


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
    # asyncpg's own UUID class, which orjson does not know.
    user_id = str(row.id)
    if user_id != caller.user_id and caller.role != "admin":
        public = {"id": user_id, "name": row.name}
        return Response(orjson.dumps(public), media_type="application/json")
    body: dict[str, Any] = {
        "id": user_id,
        "email": row.email,
        "name": row.name,
        "role": row.role,
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
