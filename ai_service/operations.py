"""What BatchAnalyzeTexts and the google.longrunning.Operations methods do, without
protobuf: each public method is one RPC's rules (ai_service.policy decides who may)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ai_service.accounts import Accounts
from ai_service.analyses import analysing_for, text_problem
from ai_service.batches import CANCELLED_REASON, BatchRunner
from ai_service.budget import InputBudget
from ai_service.domain import Analysis
from ai_service.operations_repository import ItemError, Operation, OperationsRepository
from ai_service.policy import Action, allowed, authorize
from ai_service.quotas import AnalysisQuotas
from ai_service.repository import AnalysesRepository
from servicekit.authz import Caller
from servicekit.errors import InvalidArgument, NotFound, Violations, parse_id
from servicekit.idempotency import IdempotentWrites
from servicekit.pagination import Page, PageTokens, keyset_page

NAME_PREFIX = "operations/"
# ListOperations' one filter: `user_id="<uuid>"` (quotes optional).
_USER_FILTER = re.compile(r'^\s*user_id\s*=\s*"?([0-9a-fA-F-]{32,36})"?\s*$')
# WaitOperation without a timeout waits this long at most (and never past its deadline).
DEFAULT_WAIT_SECONDS = 60.0
# How often a wait looks at an operation another replica works on.
WAIT_POLL_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class OperationView:
    """An operation, and once it is done, what became of each of its texts in order."""

    operation: Operation
    results: tuple[Analysis | ItemError, ...] = ()

    @property
    def name(self) -> str:
        return f"{NAME_PREFIX}{self.operation.id}"

    @property
    def cancelled(self) -> bool:
        """Done, with texts left unanalysed by a cancellation."""
        return any(isinstance(r, ItemError) and r.reason == CANCELLED_REASON for r in self.results)


class Operations:
    def __init__(
        self,
        repository: OperationsRepository,
        analyses: AnalysesRepository,
        runner: BatchRunner,
        *,
        accounts: Accounts,
        quotas: AnalysisQuotas | None = None,
        budget: InputBudget | None = None,
        max_texts: int,
        max_text_chars: int,
        page_tokens: PageTokens,
        requests: IdempotentWrites,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._repository = repository
        self._analyses = analyses
        self._runner = runner
        self._accounts = accounts
        self._quotas = quotas
        self._budget = budget
        self._max_texts = max_texts
        self._max_text_chars = max_text_chars
        self._page_tokens = page_tokens
        self._requests = requests
        self._clock = clock

    async def batch_analyze(
        self,
        texts: Sequence[str],
        user_id: str,
        caller: Caller,
        *,
        deadline: float,
        request_id: str = "",
    ) -> OperationView:
        """A new operation analysing `texts` in the background; with `request_id`, the
        one an earlier request with it started, if that request was this one."""
        violations = Violations()
        request = None
        try:
            request = self._requests.key(caller, request_id, "BatchAnalyzeTexts", user_id, *texts)
        except InvalidArgument as exc:
            violations.collect(exc)
        if not texts:
            violations.add("texts", "must hold at least one text")
        elif len(texts) > self._max_texts:
            violations.add("texts", f"must hold at most {self._max_texts} texts")
        for index, text in enumerate(texts):
            problem = text_problem(text, self._max_text_chars)
            if problem is not None:
                violations.add(f"texts[{index}]", problem)
            elif self._budget is not None:
                # As AnalyzeText: what cannot fit is refused now, not sent and billed.
                await self._fits(index, text, violations, deadline)
        owner = await analysing_for(user_id, caller, self._accounts, violations)

        async def start() -> OperationView:
            if self._quotas is not None:
                # One request a minute, however many texts; their tokens count later.
                await self._quotas.admit(owner)
            operation = Operation.new(owner, self._runner.worker.model, len(texts), self._clock())
            await self._repository.create(
                operation, texts, key=self._requests.record(request, operation.id)
            )
            self._runner.take(operation.id)
            return OperationView(operation)

        return await self._requests.run(request, write=start, replay=self._replay)

    async def _fits(self, index: int, text: str, violations: Violations, deadline: float) -> None:
        assert self._budget is not None
        try:
            await self._budget.check(text, deadline)
        except InvalidArgument as exc:
            for violation in exc.violations:
                violations.add(f"texts[{index}]", violation.description)

    async def get(self, name: str, caller: Caller) -> OperationView:
        return await self._view(await self._readable(name, caller))

    async def list(
        self, name: str, filter: str, caller: Caller, *, size: int, token: str
    ) -> Page[OperationView]:
        if name not in ("", NAME_PREFIX.rstrip("/")):
            raise InvalidArgument.field("name", 'must be "operations" or empty')
        owner = _filtered_owner(filter, caller)
        authorize(caller, Action.READ, owner)
        page = await keyset_page(
            self._page_tokens,
            size=size,
            token=token,
            scope=f"operations.list:user_id={owner}",
            fetch=lambda before, limit: self._repository.list_for_user(
                owner, before=before, limit=limit
            ),
            key=lambda operation: (operation.create_time, operation.id),
        )
        return Page([await self._view(o) for o in page.items], page.next_page_token)

    async def cancel(self, name: str, caller: Caller) -> None:
        """Asks for the operation to stop; it ends once its provider batches have."""
        # A writer service (analyses.write) may cancel what it may not read.
        operation = await self._found(name, caller, Action.READ, Action.ANALYZE)
        authorize(caller, Action.ANALYZE, operation.user_id)
        if operation.done:
            return
        await self._repository.request_cancel(operation.id, self._clock())
        self._runner.poke(operation.id, cancel=True)
        self._runner.notify(operation.id)

    async def wait(self, name: str, caller: Caller, *, seconds: float | None) -> OperationView:
        """The operation once done, or as it is after `seconds` (60 by default)."""
        operation = await self._readable(name, caller)
        loop = asyncio.get_running_loop()
        end = loop.time() + (DEFAULT_WAIT_SECONDS if seconds is None else seconds)
        while not operation.done and (remaining := end - loop.time()) > 0:
            await self._runner.changed(operation.id, min(remaining, WAIT_POLL_SECONDS))
            found = await self._repository.get(operation.id)
            assert found is not None, "operations are never deleted"
            operation = found
        return await self._view(operation)

    async def _readable(self, name: str, caller: Caller) -> Operation:
        return await self._found(name, caller, Action.READ)

    async def _found(self, name: str, caller: Caller, *actions: Action) -> Operation:
        """The named operation, if the caller may do one of `actions` with it."""
        if not name.startswith(NAME_PREFIX):
            raise InvalidArgument.field("name", "must be operations/{uuid}")
        operation_id = parse_id(name.removeprefix(NAME_PREFIX), field="name")
        operation = await self._repository.get(operation_id)
        # Someone else's is as unknown as a made-up id.
        if operation is None or not any(allowed(caller, a, operation.user_id) for a in actions):
            raise NotFound(
                f"no operation {operation_id}",
                reason="OPERATION_NOT_FOUND",
                metadata={"name": f"{NAME_PREFIX}{operation_id}"},
            )
        return operation

    async def _replay(self, operation_id: uuid.UUID) -> OperationView:
        operation = await self._repository.get(operation_id)
        if operation is None:
            raise NotFound(f"no operation {operation_id}", reason="OPERATION_NOT_FOUND")
        return await self._view(operation)

    async def _view(self, operation: Operation) -> OperationView:
        if not operation.done:
            return OperationView(operation)
        items = await self._repository.items(operation.id)
        found = await self._analyses.get_many(
            [i.analysis_id for i in items if i.analysis_id is not None]
        )
        results: list[Analysis | ItemError] = []
        for item in items:
            if item.analysis_id is not None and item.analysis_id in found:
                results.append(found[item.analysis_id])
            else:
                results.append(item.error or _missing(item.position))
        return OperationView(operation, tuple(results))


def _filtered_owner(filter: str, caller: Caller) -> uuid.UUID:
    if not filter.strip():
        if caller.user_id is None:
            raise InvalidArgument.field("filter", 'is required of a service: user_id="<uuid>"')
        return caller.user_id
    match = _USER_FILTER.match(filter)
    if match is None:
        raise InvalidArgument.field("filter", 'must be empty or user_id="<uuid>"')
    return parse_id(match.group(1), field="filter")


def _missing(position: int) -> ItemError:
    # Cannot happen while analyses are never deleted; said plainly if it ever does.
    return ItemError(5, "ANALYSIS_NOT_FOUND", f"the analysis of text {position} is gone")
