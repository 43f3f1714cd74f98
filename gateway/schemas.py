"""What the REST API reads and returns (Pydantic v2); they also make the OpenAPI schema.

Requests are checked for shape only (types, presence, no unknown fields); the services
own every rule (what a valid email is, how long a name may be), check them all at once
and name every field at fault, so a REST client gets the same violations, in the same
words, as a gRPC one (`gateway.problems` words the shape errors as the services word
theirs). The body size limit (`GATEWAY_MAX_BODY_BYTES`) bounds what reaches them. The
schema documents the users service's limits (`_USERS_RULES`; a unit test keeps them equal
to users_service.domain's). Responses are built from protobuf by `gateway.convert`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _plain_text(value: str) -> str:
    # Pydantic already refuses lone surrogates (which protobuf could not encode); NUL
    # is refused here because no upstream store accepts it in text.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_plain_text)]


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


# The users service's rules (users_service.domain), documented here, checked there.
_USERS_RULES: dict[str, dict[str, Any]] = {
    "email": {"format": "email", "minLength": 1, "maxLength": 254},
    "name": {"minLength": 1, "maxLength": 100},
    "password": {"minLength": 8, "maxLength": 128},
}


def _documents_without_default(rule: str) -> Any:
    def update(schema: dict[str, Any]) -> None:
        _without_default(schema)
        schema.update(_USERS_RULES[rule])

    return update


Sentiment = Literal["positive", "negative", "neutral", "mixed"]


# Requests


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(examples=["ada@example.com"], json_schema_extra=_USERS_RULES["email"])
    name: str = Field(examples=["Ada Lovelace"], json_schema_extra=_USERS_RULES["name"])
    password: str = Field(
        examples=["correct horse battery"], json_schema_extra=_USERS_RULES["password"]
    )


class UserUpdate(BaseModel):
    """The fields to change: only those present are changed; at least one is needed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    # Read only the fields in `model_fields_set`: an absent one defaults to "". Null is
    # refused, as for any string.
    name: str = Field(default="", json_schema_extra=_documents_without_default("name"))
    email: str = Field(default="", json_schema_extra=_documents_without_default("email"))
    current_password: str = Field(
        default="",
        description="the account's password: required to change `email`",
        json_schema_extra=_without_default,
    )

    @model_validator(mode="after")
    def _some_field(self) -> UserUpdate:
        if not self.model_fields_set - {"current_password"}:
            raise ValueError("give at least one field to change: name, email")
        return self


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str
    new_password: str = Field(json_schema_extra=_USERS_RULES["password"])


class TokenForm(BaseModel):
    """The token endpoint's form (RFC 6749 §4.3 and §6); which fields count depends on
    `grant_type`, and a missing one is an OAuth `invalid_request`."""

    model_config = ConfigDict(extra="ignore")

    grant_type: str = Field(default="", max_length=64, description="`password` or `refresh_token`")
    username: Text | None = Field(
        default=None, max_length=1024, description="password grant: the account's email"
    )
    password: Text | None = Field(default=None, max_length=1024, description="password grant")
    refresh_token: str | None = Field(
        default=None, max_length=256, description="refresh_token grant: the latest one"
    )
    scope: str = Field(default="", max_length=1024, description="ignored: tokens have no scopes")


class RevokeForm(BaseModel):
    """RFC 7009 §2.1."""

    model_config = ConfigDict(extra="ignore")

    token: str = Field(default="", max_length=4096, description="a refresh or access token")
    token_type_hint: str | None = Field(
        default=None, max_length=64, description="`refresh_token` or `access_token`"
    )


class AnalysisCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # An empty text is refused here as the ai service words it ("is required"), so it
    # costs no call; every other rule (blank, too long) is the service's.
    text: Text = Field(
        min_length=1, description="the text to analyse (the ai service sets the limit)"
    )


# Responses


Role = Literal["user", "admin"]


class User(BaseModel):
    """An account as its owner (or an admin) sees it."""

    id: uuid.UUID
    email: str
    name: str
    role: Role
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = Field(
        default=None, description="set on deleted accounts, which only admins list"
    )


class PublicProfile(BaseModel):
    """Another account, as an ordinary user sees it."""

    id: uuid.UUID
    name: str


class UserPage(BaseModel):
    users: list[User]
    next_page_token: str = Field(
        description="pass as page_token for the next page; empty on the last"
    )


class Token(BaseModel):
    access_token: str = Field(description="a JWT for `Authorization: Bearer …`")
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="seconds until the access token expires")
    refresh_token: str = Field(
        description="trade it once, at grant_type=refresh_token, for the next pair"
    )


class JsonWebKey(BaseModel):
    kty: str
    crv: str
    x: str
    kid: str
    use: str
    alg: str


class JsonWebKeySet(BaseModel):
    keys: list[JsonWebKey]


class Usage(BaseModel):
    """The provider tokens an analysis took (all 0 offline and when cached)."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_read_input_tokens: int = Field(
        ge=0, description="of the input, read from the prompt cache"
    )
    cache_creation_input_tokens: int = Field(
        ge=0, description="of the input, written to the prompt cache"
    )


class Analysis(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    summary: str
    sentiment: Sentiment
    key_points: list[str]
    confidence: float = Field(ge=0, le=1)
    model: str = Field(description="which model or analyzer produced it")
    cached: bool = Field(
        description="answered from the result cache (an identical recent request), no tokens"
    )
    usage: Usage
    created_at: datetime


class PartialAnalysis(BaseModel):
    """Fields produced so far while streaming; unvalidated, any may be empty."""

    summary: str
    sentiment: Sentiment | None
    key_points: list[str]


class AnalysisPage(BaseModel):
    analyses: list[Analysis]
    next_page_token: str = Field(
        description="pass as page_token for the next page; empty on the last"
    )


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    upstreams: dict[str, str] = Field(description="each upstream's grpc.health.v1 status")


# Batches (gateway.routes.operations)


class BatchAnalysisCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    texts: list[Text] = Field(
        min_length=1,
        description="the texts to analyse, each as `text` of POST /v1/analyses (the ai "
        "service sets the limits: 1,000 texts by default)",
    )


class ItemError(BaseModel):
    """Why one text of a batch has no analysis."""

    code: int = Field(description="the google.rpc.Code")
    status: str = Field(description="its name, e.g. UNAVAILABLE")
    reason: str = Field(description="a stable reason, e.g. PROVIDER_BATCH_EXPIRED")
    message: str


class BatchResult(BaseModel):
    """One text of a batch: its analysis, or why there is none."""

    analysis: Analysis | None = None
    error: ItemError | None = None


class BatchResponse(BaseModel):
    results: list[BatchResult] = Field(description="one per text, in the request's order")


class BatchMetadata(BaseModel):
    total_count: int
    succeeded_count: int
    failed_count: int
    pending_count: int
    provider_batch_ids: list[str] = Field(
        description="the provider's Message Batch ids; empty for the offline analyzer"
    )
    model: str
    user_id: uuid.UUID
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


class OperationError(BaseModel):
    code: int
    status: str
    message: str
    results: list[BatchResult] = Field(
        description="a cancelled batch: what became of each text (finished or CANCELLED)"
    )


class Operation(BaseModel):
    """A long-running operation (AIP-151): a batch of analyses."""

    name: str = Field(description="operations/{id}")
    id: uuid.UUID
    done: bool
    metadata: BatchMetadata
    response: BatchResponse | None = Field(default=None, description="once done, unless cancelled")
    error: OperationError | None = Field(default=None, description="once cancelled")


class OperationPage(BaseModel):
    operations: list[Operation]
    next_page_token: str = Field(
        description="pass as page_token for the next page; empty on the last"
    )
