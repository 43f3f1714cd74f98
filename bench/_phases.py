"""The measured phases of the users benchmark, against the servers of one run.

Each phase is one load-generator process (bench/_loadgen.py); while its window is
open, the CPU time of the server process, of the PostgreSQL backends of the run's
database and of the whole machine is sampled from /proc, so that every figure comes
with what it cost and with how busy the rest of the machine was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal, NotRequired, TypedDict, Unpack

import _pg
import _procs
import _profile
import asyncpg
import grpc
from _config import PAGE_SIZE, PASSWORD, WALK_PAGE_SIZE, UsersConfig, log
from _facts import service_setting
from _loadgen import Latency, LoadResult, Plan
from _report import median_round, ratio
from sqlalchemy import select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import URL

from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support.harness import Child, child_env
from tests.support.keys import signing_key_file
from tests.support.postgres import dsn
from tests.support.tokens import service_bearer
from users_service.models import UserRow


def select_by_id_sql() -> str:
    """The statement UsersRepository.get runs, as the asyncpg dialect renders it."""
    table = UserRow.__table__
    columns = ("id", "email", "name", "create_time", "update_time", "delete_time", "revision")
    statement = select(*(table.c[name] for name in columns)).where(
        table.c.id == "00000000-0000-4000-8000-000000000000",
        table.c.delete_time.is_(None),
    )
    return str(statement.compile(dialect=asyncpg_dialect()))  # type: ignore[no-untyped-call]


BACKEND_POLL_S = 0.25


class PhaseCpu(TypedDict, total=False):
    """Cores each part used in a phase's window, and CPU per call."""

    client_cores: float
    postgres_backends: int
    # Connections opened in the window: a pool smaller than the callers churns (and the
    # CPU of a backend that came and went in between is not counted).
    postgres_sessions_opened: int | None
    server_cores: float | None
    server_us_per_call: float | None
    postgres_cores: float
    postgres_us_per_call: float | None
    machine_busy_cores: float
    # What ran besides this benchmark (other people's work): noise.
    other_cores: float
    # The bare asyncpg loop is its own client: its CPU per call is the floor.
    process_us_per_call: float | None


class Phase(LoadResult):
    cpu: PhaseCpu
    # Calls/s and latency of its one label, or of the label that stands for the phase.
    figures: Latency | None


class Baselines(TypedDict):
    """GetUser at one concurrency, next to the empty RPC and the bare asyncpg loop."""

    concurrency: int
    empty: Phase
    getuser: Phase
    asyncpg: Phase
    getuser_per_empty: float | None
    getuser_per_asyncpg: float | None
    # The same ratios from CPU per call: what each costs, whatever else ran on the
    # machine meanwhile (calls/s on a busy machine follow the neighbours).
    getuser_per_empty_by_cpu: float | None
    getuser_per_asyncpg_by_cpu: float | None
    # Every round of each, when there were several (the ones above are the median ones).
    rounds: NotRequired[dict[str, list[Phase]]]


class ListUsers(TypedDict):
    page_size: int
    deep_page: int
    rows_before_deep_page: int
    walk_calls: int
    walk_s: float
    page1: Latency | None
    deep: Latency | None
    errors: dict[str, int]
    deep_per_page1_p50: float | None
    deep_per_page1_p99: float | None


class Tokens(TypedDict):
    callers: int
    login: Phase
    refresh: Phase


class Interference(TypedDict):
    callers: int
    login_callers: int
    idle: Phase
    loaded: Phase
    logins: Phase
    p99_loaded_per_idle: float | None
    p50_loaded_per_idle: float | None


class Profile(_profile.Summary):
    concurrency: int
    raw_stacks: str | None
    py_spy: str
    phase: Phase


class Bench:
    """One run: its database, its servers, and the phases measured against them."""

    def __init__(self, config: UsersConfig, admin: URL, database: URL, workdir: Path) -> None:
        self.config = config
        self.admin = admin
        self.database = database
        self.workdir = workdir
        self.plan = workdir / "plan.json"
        self.env = child_env()
        self.users_server: Child | None = None
        self.empty_server: Child | None = None
        self.watch: asyncpg.Connection | None = None
        self._watch_lock = asyncio.Lock()
        # Servers on one core, load on the other, when --pin is given.
        self.server_cpus = "0" if config.pin else None
        self.client_cpus = "1" if config.pin else None

    # --- set-up -------------------------------------------------------------------

    async def start_servers(self) -> None:
        service_env = {
            "USERS_DATABASE_URL": _pg.sqlalchemy_url(self.database),
            "USERS_ADDR": "127.0.0.1:0",
            "USERS_ACCESS_LOG": "false",
            "USERS_LOG_LEVEL": "INFO",
            "USERS_PAGE_TOKEN_SECRET": secrets.token_urlsafe(32),
            # Every call carries a service account's token signed with the tests' key
            # (tests/support/tokens.py), so the service verifies with that key too.
            "USERS_TOKEN_SIGNING_KEY_FILE": str(signing_key_file()),
            # The CreateUser phase signs up thousands of accounts from this one address.
            "USERS_SIGNUPS_PER_ADDRESS": "1000000000",
            **self.config.service_env,
        }
        self.users_server = Child(
            _procs.pinned([sys.executable, "-m", "users_service"], self.server_cpus),
            child_env(service_env),
            str(_procs.ROOT),
            name="users service",
        )
        self.empty_server = Child(
            _procs.pinned(
                [sys.executable, str(_procs.BENCH / "_empty_server.py"), "127.0.0.1:0"],
                self.server_cpus,
            ),
            self.env,
            str(_procs.ROOT),
            name="empty server",
        )
        for server in (self.users_server, self.empty_server):
            await server.start()
        await asyncio.gather(self.users_server.wait_serving(60), self.empty_server.wait_serving(60))
        self.watch = await asyncpg.connect(dsn(self.admin), timeout=5)

    async def stop_servers(self) -> None:
        for server in (self.users_server, self.empty_server):
            if server is not None:
                await server.stop()
        if self.watch is not None:
            await self.watch.close()

    async def check_servers(self, sample_id: str, sample_email: str) -> None:
        """One real call each, so that a broken set-up fails before anything is timed."""
        assert self.users_server is not None
        assert self.empty_server is not None
        for server in (self.users_server, self.empty_server):
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = users_pb2_grpc.UsersServiceStub(channel)
                user = await stub.GetUser(
                    users_pb2.GetUserRequest(id=sample_id), timeout=10, metadata=_metadata()
                )
                if server is self.users_server and user.email != sample_email:
                    raise RuntimeError(f"GetUser returned {user.email}, not {sample_email}")
                if server is self.users_server:
                    await stub.AuthenticateUser(
                        users_pb2.AuthenticateUserRequest(email=sample_email, password=PASSWORD),
                        timeout=30,
                        metadata=_metadata(),
                    )

    # --- one phase ----------------------------------------------------------------

    async def _backends(self) -> tuple[list[int], int | None]:
        """The server processes on the run's database, and how many sessions it has had."""
        assert self.watch is not None
        # Two phases run at once in the login-interference test; one query at a time.
        async with self._watch_lock:
            row = await self.watch.fetchrow(
                "SELECT ARRAY(SELECT pid FROM pg_stat_activity WHERE datname = $1) AS pids, "
                # to_jsonb: `sessions` exists from PostgreSQL 14 on; NULL before.
                "(SELECT (to_jsonb(d) ->> 'sessions')::bigint FROM pg_stat_database d "
                " WHERE datname = $1) AS sessions",
                self.database.database,
            )
        assert row is not None
        return [int(pid) for pid in row["pids"]], row["sessions"]

    async def phase(
        self,
        workload: str,
        *,
        concurrency: int,
        server: Child | None,
        duration: float | None = None,
        on_process: Callable[[asyncio.subprocess.Process], None] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
        figures: str | None = None,
    ) -> Phase:
        """Run one load-generator phase; its latencies plus who used how much CPU. The
        phase's `figures` are those of the label named so (by default, of its only one)."""
        config = self.config
        duration = config.duration if duration is None else duration
        args = [
            f"--workload={workload}",
            f"--plan={self.plan}",
            f"--concurrency={concurrency}",
            f"--warmup={config.warmup}",
            f"--duration={duration}",
            f"--seed={secrets.randbits(32)}",
            f"--channels={config.channels}",
        ]
        if workload == "asyncpg":
            args += [f"--dsn={dsn(self.database)}", f"--pool-size={self.pool_size()}"]
        else:
            assert server is not None
            args += [f"--target={server.address}", f"--authorization={service_bearer()}"]
        pids = [server.pid] if server is not None else []
        samples: dict[str, _procs.CpuSample] = {}
        # The last CPU reading of each backend seen during the window: a session the
        # service's pool closes before the window ends keeps what it had used.
        seen: dict[int, float] = {}
        window_closed = asyncio.Event()
        watching: list[asyncio.Task[None]] = []

        async def watch() -> None:
            # Ends between two queries, never in one: the connection is shared.
            while not window_closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(window_closed.wait(), BACKEND_POLL_S)
                    return
                backends, _ = await self._backends()
                for pid in backends:
                    seen[pid] = max(seen.get(pid, 0.0), _procs.process_cpu_s(pid))

        async def opened() -> None:
            backends, sessions = await self._backends()
            samples["start"] = _procs.cpu_sample([*pids, *backends], sessions)
            watching.append(asyncio.create_task(watch()))
            if on_start is not None:
                await on_start()

        async def closed() -> None:
            window_closed.set()
            await asyncio.gather(*watching)
            backends, sessions = await self._backends()
            stop = _procs.cpu_sample([*pids, *backends, *samples["start"].by_pid, *seen], sessions)
            for pid, cpu in seen.items():
                stop.by_pid[pid] = max(stop.by_pid[pid], cpu)
            samples["stop"] = stop

        # The bare asyncpg loop plays the server's part, so it is pinned like one.
        cpus = self.server_cpus if workload == "asyncpg" else self.client_cpus
        result = await _procs.run_loadgen(
            args,
            self.env,
            cpus=cpus,
            on_start=opened,
            on_stop=closed,
            on_process=on_process,
            within_s=config.warmup + duration + 120,
        )
        window_closed.set()
        for task in watching:
            task.cancel()
        if server is not None and server.exited():
            raise RuntimeError(f"the {server.name} died during the phase:\n{server.tail()}")
        cpu = _cpu(result, samples, server_pid=server.pid if server else None)
        labels = result["labels"]
        if figures is None and len(labels) == 1:
            (figures,) = labels
        return {**result, "cpu": cpu, "figures": labels.get(figures) if figures else None}

    def pool_size(self) -> int:
        """As many connections as the service's pool may open: the same resources."""
        env = self.config.service_env
        return service_setting("db_pool_size", env) + service_setting("db_max_overflow", env)

    # --- the phases -----------------------------------------------------------------

    async def getuser_against_baselines(self) -> list[Baselines]:
        rows: list[Baselines] = []
        for concurrency in self.config.concurrency:
            rounds: dict[str, list[Phase]] = {"empty": [], "getuser": [], "asyncpg": []}
            for n in range(self.config.rounds):
                # Side by side in time, so drifting background load hits all three alike.
                for name, workload, server in (
                    ("empty", "get", self.empty_server),
                    ("getuser", "get", self.users_server),
                    ("asyncpg", "asyncpg", None),
                ):
                    log(f"GetUser baselines: {name} at {concurrency} callers (round {n + 1})")
                    rounds[name].append(
                        await self.phase(workload, concurrency=concurrency, server=server)
                    )
            empty, getuser, bare = (
                median_round(rounds[name], lambda p: calls_per_s(p) or 0.0)
                for name in ("empty", "getuser", "asyncpg")
            )
            row: Baselines = {
                "concurrency": concurrency,
                "empty": empty,
                "getuser": getuser,
                "asyncpg": bare,
                "getuser_per_empty": ratio(calls_per_s(getuser), calls_per_s(empty)),
                "getuser_per_asyncpg": ratio(calls_per_s(getuser), calls_per_s(bare)),
                "getuser_per_empty_by_cpu": ratio(us_per_call(empty), us_per_call(getuser)),
                "getuser_per_asyncpg_by_cpu": ratio(us_per_call(bare), us_per_call(getuser)),
            }
            if self.config.rounds > 1:
                row["rounds"] = rounds
            rows.append(row)
        return rows

    async def list_users(self) -> ListUsers:
        assert self.users_server is not None
        skip = (self.config.deep_page - 1) * PAGE_SIZE
        log(f"ListUsers: walking the API to {skip:,} rows in (page {self.config.deep_page:,})")
        started = time.perf_counter()
        calls = 0
        token = ""
        walked = 0
        async with grpc.aio.insecure_channel(self.users_server.address) as channel:
            stub = users_pb2_grpc.UsersServiceStub(channel)
            # Big pages for the bulk, then pages of the measured size for the rest:
            # only what a client of the public API could do.
            while walked < skip:
                size = WALK_PAGE_SIZE if skip - walked >= WALK_PAGE_SIZE else PAGE_SIZE
                reply = await stub.ListUsers(
                    users_pb2.ListUsersRequest(page_size=size, page_token=token),
                    timeout=60,
                    metadata=_metadata(),
                )
                calls += 1
                walked += len(reply.users)
                token = reply.next_page_token
                if not token:
                    raise RuntimeError(f"the list ended after {walked} rows, before {skip}")
            first = await stub.ListUsers(
                users_pb2.ListUsersRequest(page_size=PAGE_SIZE), metadata=_metadata()
            )
            deep = await stub.ListUsers(
                users_pb2.ListUsersRequest(page_size=PAGE_SIZE, page_token=token),
                metadata=_metadata(),
            )
        walk_s = time.perf_counter() - started
        if len(deep.users) != PAGE_SIZE or len(first.users) != PAGE_SIZE:
            raise RuntimeError("page 1 or the deep page is not a full page")
        if deep.users[0].create_time.ToDatetime() <= first.users[-1].create_time.ToDatetime():
            raise RuntimeError("the deep page does not lie after page 1")
        self.write_plan(list_pages=[("page1", PAGE_SIZE, ""), ("deep", PAGE_SIZE, token)])
        log("ListUsers: page 1 and the deep page, alternating, 1 caller")
        result = await self.phase("list", concurrency=1, server=self.users_server)
        page1, deep_page = result["labels"].get("page1"), result["labels"].get("deep")
        return {
            "page_size": PAGE_SIZE,
            "deep_page": self.config.deep_page,
            "rows_before_deep_page": walked,
            "walk_calls": calls,
            "walk_s": walk_s,
            "page1": page1,
            "deep": deep_page,
            "errors": result["errors"],
            "deep_per_page1_p50": ratio(_get(deep_page, "p50_ms"), _get(page1, "p50_ms")),
            "deep_per_page1_p99": ratio(_get(deep_page, "p99_ms"), _get(page1, "p99_ms")),
        }

    async def create_users(self) -> Phase:
        log(f"CreateUser: {self.config.create_callers} callers")
        return await self.phase(
            "create", concurrency=self.config.create_callers, server=self.users_server
        )

    async def token_endpoints(self) -> Tokens:
        """IssueToken calls/s: password grants (argon2id-bound) and refresh rotations."""
        callers = self.config.login_callers
        log(f"IssueToken: password grant, {callers} callers")
        login = await self.phase("login", concurrency=callers, server=self.users_server)
        log(f"IssueToken: refresh_token grant, {callers} callers")
        # Each caller's first call logs in; only the refreshes count.
        refresh = await self.phase(
            "refresh",
            concurrency=callers,
            server=self.users_server,
            figures="IssueToken refresh_token",
        )
        return {"callers": callers, "login": login, "refresh": refresh}

    async def login_interference(self) -> Interference:
        callers = self.config.interference_callers
        log(f"Login interference: GetUser at {callers} callers, idle")
        idle = await self.phase("get", concurrency=callers, server=self.users_server)

        log(f"Login interference: GetUser at {callers} callers, {self.config.login_callers} logins")
        logins_running = asyncio.Event()
        processes: list[asyncio.subprocess.Process] = []

        async def running() -> None:
            logins_running.set()

        logins = asyncio.create_task(
            self.phase(
                "auth",
                concurrency=self.config.login_callers,
                server=self.users_server,
                duration=3600,
                on_process=processes.append,
                on_start=running,
            )
        )
        waiter = asyncio.create_task(logins_running.wait())
        await asyncio.wait({logins, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if logins.done():
            waiter.cancel()
            await logins  # it failed before its window opened: raise its error
        try:
            loaded = await self.phase("get", concurrency=callers, server=self.users_server)
        finally:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGUSR1)
        auth = await logins
        return {
            "callers": callers,
            "login_callers": self.config.login_callers,
            "idle": idle,
            "loaded": loaded,
            "logins": auth,
            "p99_loaded_per_idle": ratio(_figure(loaded, "p99_ms"), _figure(idle, "p99_ms")),
            "p50_loaded_per_idle": ratio(_figure(loaded, "p50_ms"), _figure(idle, "p50_ms")),
        }

    async def profile(self) -> Profile | None:
        py_spy = _profile.find_py_spy()
        if py_spy is None:
            log("profile: py-spy not found (`.venv/bin/pip install py-spy`); skipped")
            return None
        assert self.users_server is not None
        concurrency = max(self.config.concurrency)
        raw = Path(self.config.profile_raw or self.workdir / "profile.txt")
        rate = 200
        recording: list[asyncio.Task[str]] = []
        pid = self.users_server.pid
        duration = self.config.duration

        async def record() -> None:
            recording.append(asyncio.create_task(_profile.record(py_spy, pid, duration, raw, rate)))

        log(f"profile: py-spy on the users service, GetUser at {concurrency} callers")
        # A little longer than py-spy, so that every sample falls inside the load.
        phase = await self.phase(
            "get",
            concurrency=concurrency,
            server=self.users_server,
            duration=duration + 2,
            on_start=record,
        )
        message = await recording[0]
        return {
            **_profile.summarise(raw, rate=rate, duration=duration),
            "concurrency": concurrency,
            "raw_stacks": str(raw) if self.config.profile_raw else None,
            "py_spy": message.splitlines()[-1] if message else "",
            "phase": phase,
        }

    def write_plan(self, **changes: Unpack[Plan]) -> None:
        plan: Plan = json.loads(self.plan.read_text()) if self.plan.exists() else {}
        plan.update(changes)
        self.plan.write_text(json.dumps(plan))


def _cpu(
    result: LoadResult, samples: dict[str, _procs.CpuSample], *, server_pid: int | None
) -> PhaseCpu:
    """CPU use in the load generator's window, in cores and µs per call."""
    window = result["window_s"]
    calls = sum(label["calls"] for label in result["labels"].values())

    def per_call(seconds: float | None) -> float | None:
        return seconds / calls * 1e6 if seconds is not None and calls else None

    client = result["client_cpu_s"]
    cpu: PhaseCpu = {"client_cores": client / window}
    start, stop = samples.get("start"), samples.get("stop")
    if start is not None and stop is not None:
        used = {pid: max(0.0, s - start.by_pid.get(pid, 0.0)) for pid, s in stop.by_pid.items()}
        server = used.pop(server_pid, 0.0) if server_pid is not None else None
        postgres = sum(used.values())
        busy = stop.busy - start.busy
        cpu.update(
            {
                "postgres_backends": len(used),
                "postgres_sessions_opened": (
                    stop.pg_sessions - start.pg_sessions
                    if stop.pg_sessions is not None and start.pg_sessions is not None
                    else None
                ),
                "server_cores": server / window if server is not None else None,
                "server_us_per_call": per_call(server),
                "postgres_cores": postgres / window,
                "postgres_us_per_call": per_call(postgres),
                "machine_busy_cores": busy / window,
                "other_cores": max(0.0, busy - (server or 0.0) - postgres - client) / window,
            }
        )
    if server_pid is None:
        cpu["process_us_per_call"] = per_call(client)
    return cpu


def _metadata() -> tuple[tuple[str, str]]:
    """A service account's credentials, with every scope (tests/support/tokens.py)."""
    return (("authorization", service_bearer()),)


def _get(latency: Latency | None, key: Literal["p50_ms", "p99_ms"]) -> float | None:
    return latency[key] if latency is not None else None


def _figure(phase: Phase, key: Literal["p50_ms", "p99_ms"]) -> float | None:
    return _get(phase["figures"], key)


def calls_per_s(phase: Phase) -> float | None:
    figures = phase["figures"]
    return figures["calls_per_s"] if figures is not None else None


def us_per_call(phase: Phase) -> float | None:
    """Server CPU per call (for the bare asyncpg loop: its own)."""
    cpu = phase["cpu"]
    return cpu.get("server_us_per_call") or cpu.get("process_us_per_call")
