"""The request id of the work in progress, shared by the whole process.

One context variable: a server's call interceptor (servicekit) sets it for each call it
serves, the gateway for each HTTP request, and every `Connection` call sends it on as
`x-request-id` metadata, so one id follows a request through every service it reaches.
Each call and each request runs in its own task, so concurrent ones never see each
other's id.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID_KEY = "x-request-id"

# Metadata by which a trusted front end (the gateway) names the end client it calls for:
# the address the users service's login and sign-up limits count. The users service
# heeds it only from a service allowed to log users in or sign them up.
CLIENT_ADDRESS_KEY = "x-tandem-client-address"

# What `request_id_var.get()` returns outside any call: a log line's placeholder, and
# never sent as an id.
NO_REQUEST_ID = "-"

request_id_var: ContextVar[str] = ContextVar("request_id", default=NO_REQUEST_ID)
