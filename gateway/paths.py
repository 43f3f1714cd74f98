"""The OAuth 2 endpoints' paths: the routes, the OpenAPI security scheme and the error
handlers (whose validation errors there carry OAuth's `error` too) all name them."""

TOKEN_URL = "/v1/auth/token"  # noqa: S105 - a URL, not a password
REVOKE_URL = "/v1/auth/revoke"
OAUTH_PATHS = frozenset({TOKEN_URL, REVOKE_URL})
