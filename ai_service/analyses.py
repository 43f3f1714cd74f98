"""What the ai service does: each public method is one RPC's rules, without protobuf."""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ai_service.accounts import Accounts
from ai_service.backends.base import UpstreamTrace
from ai_service.budget import InputBudget
from ai_service.chain import Answered, ModelChain
from ai_service.domain import Analysis, AnalysisResult, PartialResult, Usage
from ai_service.inflight import SingleFlight
from ai_service.metrics import Metrics
from ai_service.policy import Action, allowed, authorize
from ai_service.prompt import PROMPT_VERSION
from ai_service.quotas import AnalysisQuotas
from ai_service.repository import AnalysesRepository
from ai_service.slots import ProviderSlots
from servicekit.authz import Caller
from servicekit.errors import InvalidArgument, NotFound, Violations, empty_text, parse_id
from servicekit.idempotency import IdempotentWrites, KeyTaken, RequestKey
from servicekit.pagination import Page, PageTokens, keyset_page

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Limits:
    max_text_chars: int
    cache_ttl_seconds: float


def normalise(text: str) -> str:
    """The text as the result cache compares it: NFC, trimmed, whitespace collapsed."""
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def cache_key(model: str, text: str, owner: uuid.UUID) -> str:
    """The result-cache key of a text: one user's, never shared with another user, so
    neither an answer nor the timing of a hit tells one user what another analysed."""
    material = "\x1f".join((PROMPT_VERSION, model, str(owner), normalise(text)))
    return hashlib.sha256(material.encode()).hexdigest()


class Analyses:
    def __init__(
        self,
        repository: AnalysesRepository,
        chain: ModelChain,
        *,
        limits: Limits,
        page_tokens: PageTokens,
        slots: ProviderSlots,
        accounts: Accounts,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        requests: IdempotentWrites | None = None,
        quotas: AnalysisQuotas | None = None,
        budget: InputBudget | None = None,
    ) -> None:
        """`requests`: the request ids of analyses (kept in the repository's `keys`, for
        24 hours unless told); `quotas`: each user's (none unless given); `budget`: the
        input tokens a text may need (unchecked unless given)."""
        self._repository = repository
        self._chain = chain
        self._budget = budget
        self._accounts = accounts
        self._limits = limits
        self._page_tokens = page_tokens
        self._slots = slots
        self._flights: SingleFlight[_Answer] = SingleFlight()
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._requests = requests or IdempotentWrites(repository.keys, clock=clock)
        self._quotas = quotas

    async def analyze(
        self,
        text: str,
        user_id: str,
        caller: Caller,
        *,
        deadline: float,
        trace: UpstreamTrace,
        request_id: str = "",
    ) -> Analysis:
        """A new stored analysis; with `request_id`, the one an earlier request with it
        stored, if that request was this one."""
        owner, request = await self._accept(text, user_id, caller, request_id, deadline)
        return await self._requests.run(
            request,
            write=lambda: self._analyze(text, owner, request, deadline=deadline, trace=trace),
            replay=self._stored,
        )

    async def stream(
        self,
        text: str,
        user_id: str,
        caller: Caller,
        *,
        deadline: float,
        trace: UpstreamTrace,
        request_id: str = "",
    ) -> AsyncIterator[PartialResult | Analysis]:
        """Partial results as the model produces them, then the stored Analysis; with
        a `request_id` seen before, only the analysis that request stored."""
        owner, request = await self._accept(text, user_id, caller, request_id, deadline)
        with self._requests.hold(request):
            made = await self._requests.previous(request) if request is not None else None
            if made is not None:
                yield await self._stored(made)
                return
            async for item in self._stream(text, owner, request, deadline=deadline, trace=trace):
                yield item
        if request is not None:
            await self._requests.written()

    async def get(self, analysis_id: str, caller: Caller) -> Analysis:
        parsed = parse_id(analysis_id)
        analysis = await self._repository.get(parsed)
        # Someone else's is as unknown as a made-up id.
        if analysis is None or not allowed(caller, Action.READ, analysis.user_id):
            raise NotFound(
                f"no analysis {parsed}", reason="ANALYSIS_NOT_FOUND", metadata={"id": str(parsed)}
            )
        return analysis

    async def list(self, user_id: str, caller: Caller, *, size: int, token: str) -> Page[Analysis]:
        owner = _owner(user_id, caller)
        authorize(caller, Action.READ, owner)
        return await keyset_page(
            self._page_tokens,
            size=size,
            token=token,
            scope=f"analyses.list:user_id={owner}",
            fetch=lambda before, limit: self._repository.list_for_user(
                owner, before=before, limit=limit
            ),
            key=lambda analysis: (analysis.create_time, analysis.id),
        )

    async def _analyze(
        self,
        text: str,
        owner: uuid.UUID,
        request: RequestKey | None,
        *,
        deadline: float,
        trace: UpstreamTrace,
    ) -> Analysis:
        await self._admit(owner)
        key = cache_key(self._chain.primary, text, owner)
        cached = await self._cached(key)
        if cached is not None:
            return await self._store(owner, _Answer(cached, key), cached=True, request=request)
        answer, shared = await self._flights.run(
            key, lambda: self._produce(text, owner, deadline=deadline, trace=trace)
        )
        return await self._store(owner, answer, cached=shared, request=request)

    async def _stream(
        self,
        text: str,
        owner: uuid.UUID,
        request: RequestKey | None,
        *,
        deadline: float,
        trace: UpstreamTrace,
    ) -> AsyncIterator[PartialResult | Analysis]:
        await self._admit(owner)
        key = cache_key(self._chain.primary, text, owner)
        cached = await self._cached(key)
        if cached is not None:
            yield await self._store_streamed(owner, _Answer(cached, key), True, request)
            return
        if self._flights.busy(key):
            # An identical AnalyzeText is in flight: wait for its answer instead.
            answer, _ = await self._flights.run(
                key, lambda: self._produce(text, owner, deadline=deadline, trace=trace)
            )
            yield await self._store_streamed(owner, answer, True, request)
            return
        answered: Answered | None = None
        async with self._slots.slot(owner, deadline):
            async for item in self._chain.stream(text, deadline=deadline, trace=trace):
                if isinstance(item, Answered):
                    answered = item
                else:
                    yield item
        assert answered is not None, "a chain's stream always ends with its answer"
        final = await self._produced(answered, text, owner)
        yield await self._store_streamed(owner, final, False, request)

    async def _accept(
        self, text: str, user_id: str, caller: Caller, request_id: str, deadline: float
    ) -> tuple[uuid.UUID, RequestKey | None]:
        """The user a new analysis is for, once the caller may make it for them and
        the text fits, and the key of its request (None without a request id)."""
        violations = Violations()
        request = None
        try:
            # The request as sent: the same text for the same user.
            request = self._requests.key(caller, request_id, "AnalyzeText", text, user_id)
        except InvalidArgument as exc:
            violations.collect(exc)
        problem = text_problem(text, self._limits.max_text_chars)
        if problem is not None:
            violations.add("text", problem)
        owner = await analysing_for(user_id, caller, self._accounts, violations)
        if self._budget is not None:
            # After the cheap checks and before anything is counted or paid for.
            await self._budget.check(text, deadline)
        return owner, request

    async def _admit(self, owner: uuid.UUID) -> None:
        if self._quotas is not None:
            await self._quotas.admit(owner)

    async def _spent(self, owner: uuid.UUID, result: AnalysisResult) -> None:
        if self._quotas is not None:
            await self._quotas.spent(owner, result.usage)

    async def _cached(self, key: str) -> AnalysisResult | None:
        if self._limits.cache_ttl_seconds <= 0:
            return None
        since = self._clock() - timedelta(seconds=self._limits.cache_ttl_seconds)
        result = await self._repository.find_result(key, since=since)
        if result is not None:
            self._metrics.cache_hit(result.model)
        return result

    async def _produce(
        self, text: str, owner: uuid.UUID, *, deadline: float, trace: UpstreamTrace
    ) -> _Answer:
        async with self._slots.slot(owner, deadline):
            answered = await self._chain.analyze(text, deadline=deadline, trace=trace)
        return await self._produced(answered, text, owner)

    async def _produced(self, answered: Answered, text: str, owner: uuid.UUID) -> _Answer:
        """A new answer, counted, and filed under the model that made it: an answer of a
        later model or the fallback never answers a request meant for the primary."""
        self._metrics.produced(answered.result)
        await self._spent(owner, answered.result)
        return _Answer(answered.result, cache_key(answered.model, text, owner))

    async def _store(
        self, owner: uuid.UUID, answer: _Answer, *, cached: bool, request: RequestKey | None
    ) -> Analysis:
        """Store the analysis of `answer`, with its request's key; KeyTaken when that
        key was stored meanwhile (by a request elsewhere): then nothing was."""
        result = answer.result
        if cached:
            # Served without an upstream call: nothing was spent on this one.
            result = replace(result, usage=Usage())
        analysis = Analysis(
            id=uuid.uuid4(),
            user_id=owner,
            result=result,
            create_time=self._clock(),
            cached=cached,
        )
        await self._repository.insert(
            analysis,
            cache_key=None if cached else answer.cache_key,
            key=self._requests.record(request, analysis.id),
        )
        return analysis

    async def _store_streamed(
        self, owner: uuid.UUID, answer: _Answer, cached: bool, request: RequestKey | None
    ) -> Analysis:
        """What a stream ends with: its stored analysis, or the one its request's key
        was stored with meanwhile."""
        try:
            return await self._store(owner, answer, cached=cached, request=request)
        except KeyTaken:
            assert request is not None
            return await self._stored(await self._requests.winner(request))

    async def _stored(self, analysis_id: uuid.UUID) -> Analysis:
        """The analysis an earlier request with the same key stored."""
        analysis = await self._repository.get(analysis_id)
        if analysis is None:
            raise NotFound(
                f"no analysis {analysis_id}",
                reason="ANALYSIS_NOT_FOUND",
                metadata={"id": str(analysis_id)},
            )
        return analysis


@dataclass(frozen=True, slots=True)
class _Answer:
    """A result, and the result-cache key it is filed under."""

    result: AnalysisResult
    cache_key: str


async def analysing_for(
    user_id: str, caller: Caller, accounts: Accounts, violations: Violations
) -> uuid.UUID:
    """The user new analyses are for, once the request is valid (`violations`: what is
    wrong with its other fields) and the caller may analyse for that user."""
    owner = None
    try:
        owner = _owner(user_id, caller)
    except InvalidArgument as exc:
        violations.collect(exc)
    violations.check()
    assert owner is not None
    authorize(caller, Action.ANALYZE, owner)
    if caller.is_service and not await accounts.is_live(owner, caller):
        raise NotFound(
            f"no user {owner}", reason="USER_NOT_FOUND", metadata={"user_id": str(owner)}
        )
    return owner


def text_problem(text: str, max_chars: int) -> str | None:
    """What is wrong with a text to analyse, if anything."""
    if not text.strip():
        return empty_text(text)
    if len(text) > max_chars:
        return f"must be at most {max_chars} characters"
    return None


def _owner(user_id: str, caller: Caller) -> uuid.UUID:
    """The user a request names, else the caller's own account."""
    if user_id:
        return parse_id(user_id, field="user_id")
    if caller.user_id is None:
        raise InvalidArgument.field("user_id", "is required: a service acts for a named user")
    return caller.user_id
