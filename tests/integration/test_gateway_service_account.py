"""The gateway's own credential (its service account, through tandem_client): used for
the calls that act for no user, and refused, an outage of the gateway's (503, logged),
never the client's fault (401)."""

from __future__ import annotations

import logging

import pytest

from tests.support.gateway import PASSWORD, assert_problem, gateway_stack, unique_email
from tests.support.servers import migrate_users
from users_service.service_accounts import CLIENT_SECRET_PREFIX

WRONG_SECRET = CLIENT_SECRET_PREFIX + "not-the-gateways-secret"


async def test_a_refused_service_account_is_a_logged_503(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO)
    async with gateway_stack(sqlite_url, client_secret=WRONG_SECRET) as stack:
        body = {"email": unique_email(), "name": "Ada", "password": PASSWORD}
        signed_up = await stack.client.post("/v1/users", json=body)
        login = {"grant_type": "password", "username": body["email"], "password": PASSWORD}
        logged_in = await stack.client.post("/v1/auth/token", data=login)
        # JWKS needs no token: it still works.
        jwks = await stack.client.get("/.well-known/jwks.json")
    detail = "the gateway cannot authenticate to its upstreams; retry later"
    assert assert_problem(signed_up, 503, "UNAVAILABLE")["detail"] == detail
    assert assert_problem(logged_in, 503, "UNAVAILABLE")["detail"] == detail
    assert jwks.status_code == 200
    refused = [r for r in caplog.records if r.name == "gateway.upstreams"]
    assert [r.levelno for r in refused if "refused" in r.getMessage()] == [logging.ERROR] * 2
    assert "service account gateway (BAD_CREDENTIALS)" in refused[-1].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    assert WRONG_SECRET not in caplog.text


async def test_one_service_token_serves_many_calls(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url, users_access_log=True) as stack:
        caplog.set_level(logging.INFO, logger="servicekit.access")
        for _ in range(3):
            await stack.new_account()
    issued = [r for r in caplog.records if "AuthService/IssueToken" in r.getMessage()]
    # Three logins, and one client-credentials grant for the gateway's own token.
    assert len(issued) == 4, [r.getMessage() for r in issued]
