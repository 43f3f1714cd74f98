"""A Redis for the tests of shared limits: TEST_REDIS_URL, else the local one.

Each test counts under a key prefix of its own (`redis_prefix`), and its keys are
deleted after it, so tests never see each other's counts nor leave any behind. The
fixture is synchronous (redis-py's blocking client), so a fixture may ask for it by name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards. Skips (fails in
    CI) unless the tests' Redis answers."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        message = f"Redis is not reachable at {REDIS_URL} ({exc}); start it or set TEST_REDIS_URL"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the Redis tests: {message}")
        pytest.skip(message)
    prefix = f"tandem-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


async def key_ttls(prefix: str) -> dict[bytes, int]:
    """The keys under `prefix`, with the seconds each has left."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        return {key: await client.ttl(key) async for key in client.scan_iter(match=f"{prefix}:*")}
    finally:
        await client.aclose()
