"""Access tokens: what the users service signs, what every verifier accepts and refuses."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from servicekit.tokens import KeySet, KeysUnavailable, TokenRejected, TokenVerifier
from users_service.signing_keys import PublicKey, build_signing_keys, thumbprint
from users_service.tokens import AccessTokens

ISSUER, AUDIENCE = "tandem-users", "tandem-api"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Source:
    """A JWKS endpoint that counts its fetches and can be changed or broken; `failures`
    fails that many fetches more, a fetch waits for `gate` when one is set, and `asked`
    is set by the first."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        self.fail = False
        self.failures = 0
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def __call__(self) -> Mapping[str, Any]:
        self.fetches += 1
        self.asked.set()
        await (self.gate.wait() if self.gate is not None else asyncio.sleep(0))
        if self.fail or self.failures > 0:
            self.failures = max(0, self.failures - 1)
            raise ConnectionError("users is down")
        return self.jwks


class Sleep:
    """Sleeps by moving `clock` on at once, and remembers for how long."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds
        await asyncio.sleep(0)


def issuer_of(key: Ed25519PrivateKey, *also: Ed25519PrivateKey, ttl: int = 900) -> AccessTokens:
    verify_only = [PublicKey(thumbprint(k.public_key()), k.public_key()) for k in also]
    keys = build_signing_keys(key, verify_only)
    return AccessTokens(keys, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=ttl)


def issue(tokens: AccessTokens, *, role: str = "user", now: datetime = NOW) -> str:
    return tokens.issue(
        user_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        role=role,
        now=now,
        ends=datetime(2027, 1, 1, tzinfo=UTC),
    ).token


def verifier(
    source: Source, *, clock: float | None = None, max_lifetime: int = 3600, **key_options: Any
) -> TokenVerifier:
    return TokenVerifier(
        KeySet(source, clock=Clock(0), **key_options),
        issuer=ISSUER,
        audience=AUDIENCE,
        max_lifetime_seconds=max_lifetime,
        clock=Clock(clock if clock is not None else NOW.timestamp() + 1),
    )


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def forge(claims: Mapping[str, Any], key: Any, *, algorithm: str, kid: str | None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


async def test_an_issued_token_verifies_with_nothing_but_pyjwt_and_the_jwks(
    key: Ed25519PrivateKey,
) -> None:
    tokens = issuer_of(key)
    token = issue(tokens, role="admin")
    jwks = json.loads(json.dumps(tokens.keys.jwks()))
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    public = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(
        token,
        public,
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"verify_exp": False},
    )
    assert set(claims) == {"iss", "aud", "sub", "iat", "exp", "jti", "sid", "role"}
    assert claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 900
    assert jwks["keys"][0] == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwks["keys"][0]["x"],
        "kid": header["kid"],
        "use": "sig",
        "alg": "EdDSA",
    }


def test_the_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = Ed25519PublicKey.from_public_bytes(x)
    assert thumbprint(public) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


async def test_the_verifier_accepts_a_good_token_and_remembers_it(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    check = verifier(source)
    token = issue(tokens)
    first = await check.verify(token)
    assert first.role == "user"
    assert first.session_id == claims_of(token)["sid"]
    assert await check.verify(token) is first
    assert source.fetches == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "another-api"}, "WRONG_AUDIENCE"),
        ({"iss": "someone-else"}, "TOKEN_INVALID"),
        ({"role": "root"}, "TOKEN_INVALID"),
        ({"sid": ""}, "TOKEN_INVALID"),
    ],
)
async def test_claims_are_checked(
    key: Ed25519PrivateKey, change: dict[str, Any], reason: str
) -> None:
    tokens = issuer_of(key)
    claims = {**claims_of(issue(tokens)), **change}
    token = forge(claims, key, algorithm="EdDSA", kid=tokens.keys.signing_kid)
    with pytest.raises(TokenRejected) as caught:
        await verifier(Source(tokens.keys.jwks())).verify(token)
    assert caught.value.reason == reason


async def test_a_missing_claim_is_refused(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    claims = claims_of(issue(tokens))
    del claims["sid"]
    token = forge(claims, key, algorithm="EdDSA", kid=tokens.keys.signing_kid)
    with pytest.raises(TokenRejected) as caught:
        await verifier(Source(tokens.keys.jwks())).verify(token)
    assert caught.value.reason == "TOKEN_INVALID"


async def test_forgeries_are_refused(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    jwks = tokens.keys.jwks()
    kid = tokens.keys.signing_kid
    claims = claims_of(issue(tokens))
    public_pem = jwks["keys"][0]["x"]
    foreign = Ed25519PrivateKey.generate()
    header, payload, signature = issue(tokens).split(".")
    tampered_claims = {**claims_of(f"{header}.{payload}.{signature}"), "sid": str(uuid.uuid4())}
    tampered_payload = (
        base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).rstrip(b"=").decode()
    )
    forgeries = {
        "alg none": jwt.encode(claims, "", algorithm="none", headers={"kid": kid}),
        "HS256 keyed with the public key": forge(
            claims, public_pem.encode(), algorithm="HS256", kid=kid
        ),
        "a foreign key under our kid": forge(claims, foreign, algorithm="EdDSA", kid=kid),
        "no kid": forge(claims, key, algorithm="EdDSA", kid=None),
        "a tampered sid": f"{header}.{tampered_payload}.{signature}",
        "not a JWT": "not-a-jwt",
    }
    check = verifier(Source(jwks))
    for name, token in forgeries.items():
        with pytest.raises(TokenRejected) as caught:
            await check.verify(token)
        assert caught.value.reason == "TOKEN_INVALID", name


async def test_an_unknown_kid_is_refused_after_one_refetch(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    check = verifier(source, min_refetch_seconds=10)
    foreign = Ed25519PrivateKey.generate()
    forged = forge(
        claims_of(issue(tokens)), foreign, algorithm="EdDSA", kid=thumbprint(foreign.public_key())
    )
    with pytest.raises(TokenRejected) as caught:
        await check.verify(forged)
    assert caught.value.reason == "UNKNOWN_SIGNING_KEY"
    assert source.fetches == 1


async def test_a_flood_of_garbage_kids_fetches_at_most_once_per_interval(
    key: Ed25519PrivateKey,
) -> None:
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    keys = KeySet(source, min_refetch_seconds=10, clock=(clock := Clock(0)))
    await keys.get(tokens.keys.signing_kid)
    with pytest.raises(TokenRejected):
        await keys.get("garbage-right-after-a-fetch")
    assert source.fetches == 1
    clock.now += 10
    results = await asyncio.gather(
        *(keys.get(f"garbage-{i}") for i in range(200)), return_exceptions=True
    )
    assert all(isinstance(r, TokenRejected) for r in results)
    assert source.fetches == 2
    clock.now += 5
    with pytest.raises(TokenRejected):
        await keys.get("garbage-again")
    assert source.fetches == 2
    clock.now += 6
    with pytest.raises(TokenRejected):
        await keys.get("garbage-later")
    assert source.fetches == 3


async def test_rotation_with_tokens_of_the_old_key_in_flight(key: Ed25519PrivateKey) -> None:
    old_issuer = issuer_of(key)
    new_key = Ed25519PrivateKey.generate()
    source = Source(old_issuer.keys.jwks())
    check = verifier(source, min_refetch_seconds=0)
    old_token = issue(old_issuer)
    await check.verify(old_token)
    # Step 2: the new key signs, the old one only verifies; the verifier learns the new
    # kid on its first token, and the old key's tokens still verify.
    new_issuer = issuer_of(new_key, key)
    source.jwks = new_issuer.keys.jwks()
    assert {k["kid"] for k in source.jwks["keys"]} == {
        old_issuer.keys.signing_kid,
        new_issuer.keys.signing_kid,
    }
    await check.verify(issue(new_issuer))
    fresh = verifier(source)
    await fresh.verify(old_token)
    await fresh.verify(issue(new_issuer))
    # Step 3: the old key is dropped; its tokens stop verifying (once not remembered).
    source.jwks = issuer_of(new_key).keys.jwks()
    with pytest.raises(TokenRejected) as caught:
        await verifier(source).verify(old_token)
    assert caught.value.reason == "UNKNOWN_SIGNING_KEY"


async def test_expiry_and_the_lifetime_cap(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    jwks = tokens.keys.jwks()
    token = issue(tokens)
    expired = verifier(Source(jwks), clock=NOW.timestamp() + 900 + 31)
    with pytest.raises(TokenRejected) as caught:
        await expired.verify(token)
    assert caught.value.reason == "TOKEN_EXPIRED"
    assert (await expired.verify(token, allow_expired=True)).expires_at == claims_of(token)["exp"]
    # Signed by the real key, but claiming a day of life: refused whatever the signature.
    long_lived = issue(issuer_of(key, ttl=24 * 3600))
    with pytest.raises(TokenRejected) as caught:
        await verifier(Source(jwks), max_lifetime=3600).verify(long_lived)
    assert caught.value.reason == "TOKEN_LIFETIME_TOO_LONG"


async def test_a_remembered_token_still_expires(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    clock = Clock(NOW.timestamp() + 1)
    check = TokenVerifier(
        KeySet(Source(tokens.keys.jwks())),
        issuer=ISSUER,
        audience=AUDIENCE,
        max_lifetime_seconds=3600,
        clock=clock,
    )
    token = issue(tokens)
    await check.verify(token)
    clock.now += 900 + 31
    with pytest.raises(TokenRejected) as caught:
        await check.verify(token)
    assert caught.value.reason == "TOKEN_EXPIRED"


async def test_keys_that_cannot_be_fetched(key: Ed25519PrivateKey) -> None:
    # Unchanged by the back-off of a set never fetched (below): the first retry is
    # sooner than min_refetch_seconds, but still not at once.
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    source.fail = True
    clock = Clock(0)
    keys = KeySet(source, max_age_seconds=60, min_refetch_seconds=10, clock=clock)
    with pytest.raises(KeysUnavailable):
        await keys.get(tokens.keys.signing_kid)
    # Not asked again at once: an outage of the users service is not multiplied.
    with pytest.raises(KeysUnavailable):
        await keys.get(tokens.keys.signing_kid)
    assert source.fetches == 1
    clock.now += 10
    source.fail = False
    await keys.get(tokens.keys.signing_kid)
    # Once known, a failed refresh keeps the keys it had.
    source.fail = True
    clock.now += 61
    await keys.get(tokens.keys.signing_kid)
    assert source.fetches == 3


async def test_a_set_never_fetched_retries_sooner_doubling_up_to_the_interval(
    key: Ed25519PrivateKey,
) -> None:
    tokens = issuer_of(key)
    kid = tokens.keys.signing_kid
    source = Source(tokens.keys.jwks())
    source.fail = True
    clock = Clock(0)
    keys = KeySet(source, min_refetch_seconds=10, first_retry_seconds=0.25, clock=clock)
    delays = []
    for _ in range(8):
        with pytest.raises(KeysUnavailable) as caught:
            await keys.get(kid)
        # Retry-After says when the next fetch may start; before that, none does.
        delays.append(caught.value.retry_after)
        fetches = source.fetches
        clock.now += caught.value.retry_after / 2
        with pytest.raises(KeysUnavailable) as early:
            await keys.get(kid)
        assert early.value.retry_after == caught.value.retry_after / 2
        assert source.fetches == fetches
        clock.now += caught.value.retry_after / 2
    assert delays == [0.25, 0.5, 1, 2, 4, 8, 10, 10]
    assert source.fetches == 8
    source.fail = False
    await keys.get(kid)
    # Once fetched, an outage is asked about once per min_refetch_seconds again.
    source.fail = True
    for step, fetches in [(5, 9), (5, 10), (5, 10), (5, 11)]:
        clock.now += step
        with pytest.raises(TokenRejected):
            await keys.get("unknown-kid")
        assert source.fetches == fetches


async def test_concurrent_lookups_share_one_failing_fetch(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    source.fail, source.gate = True, asyncio.Event()
    keys = KeySet(source, first_retry_seconds=0.25, clock=Clock(0))
    lookups = [asyncio.ensure_future(keys.get(tokens.keys.signing_kid)) for _ in range(50)]
    await source.asked.wait()
    source.gate.set()
    results = await asyncio.gather(*lookups, return_exceptions=True)
    assert all(isinstance(r, KeysUnavailable) and r.retry_after == 0.25 for r in results)
    assert source.fetches == 1


async def test_warming_fetches_until_the_source_answers(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    source.failures = 3
    clock = Clock(0)
    sleep = Sleep(clock)
    keys = KeySet(source, min_refetch_seconds=10, clock=clock, sleep=sleep)
    await keys.warm()
    assert sleep.slept == [0.25, 0.5, 1]
    assert source.fetches == 4
    # The first token finds the keys in; warming again fetches nothing.
    await keys.get(tokens.keys.signing_kid)
    await keys.warm()
    assert source.fetches == 4


async def test_warming_shares_the_fetch_a_token_started(key: Ed25519PrivateKey) -> None:
    tokens = issuer_of(key)
    source = Source(tokens.keys.jwks())
    source.gate = asyncio.Event()
    keys = KeySet(source, clock=Clock(0))
    lookup = asyncio.ensure_future(keys.get(tokens.keys.signing_kid))
    await source.asked.wait()
    warming = asyncio.ensure_future(keys.warm())
    source.gate.set()
    await asyncio.gather(lookup, warming)
    assert source.fetches == 1
