"""A servicer for testing the shared plumbing itself, hosted as `users.v1.UsersService`.

`GetUser` behaves according to the id it is asked for:
- `boom`: raises an unexpected exception (the plumbing must hide it);
- `invalid`: raises InvalidArgument for the `id` field;
- `busy`: raises ResourceExhausted with a retry delay;
- `slow:<seconds>`: logs that it started, works that long, then answers;
- anything else: answers a user with that id.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial
from typing import Any

from servicekit import errors
from servicekit.logs import configure_logging
from servicekit.server import Service, build_server, serve_until_signalled
from servicekit.tokens import bearer_token
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc

log = logging.getLogger("probe")
SERVICE_NAME = "users.v1.UsersService"
# The one credential `authenticate` accepts.
TOKEN = "probe-token"
CREDENTIALS = (("authorization", f"Bearer {TOKEN}"),)


async def authenticate(context: Any) -> str:
    """Stands in for servicekit.callers.CallerResolver.caller: only TOKEN passes."""
    if bearer_token(context.invocation_metadata()) != TOKEN:
        raise errors.Unauthenticated("no probe token", reason="CREDENTIALS_MISSING")
    return TOKEN


class Probe(users_pb2_grpc.UsersServiceServicer):
    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.User:  # noqa: N802
        log.info("GetUser %s started", request.id)
        if request.id == "boom":
            raise RuntimeError("secret internal detail at /srv/app.py line 12")
        if request.id == "invalid":
            raise errors.InvalidArgument.field("id", "must be a UUID")
        if request.id == "busy":
            raise errors.ResourceExhausted("too many calls", retry_after=3)
        if request.id.startswith("slow:"):
            await asyncio.sleep(float(request.id.removeprefix("slow:")))
        return users_pb2.User(id=request.id, name="probe")


def service() -> Service:
    probe = Probe()  # type: ignore[abstract]
    return Service(SERVICE_NAME, partial(users_pb2_grpc.add_UsersServiceServicer_to_server, probe))


async def main(addr: str, grace: float) -> None:
    server = build_server(addr, [service()], reflection=authenticate)
    await serve_until_signalled(server, grace)


if __name__ == "__main__":
    configure_logging("INFO")
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
