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
from typing import Any

import _pg
import _procs
import _profile
import asyncpg
import grpc
from _config import PAGE_SIZE, PASSWORD, WALK_PAGE_SIZE, Config, log
from _facts import service_setting
from sqlalchemy import select
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import URL

from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
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


class Bench:
    """One run: its database, its servers, and the phases measured against them."""

    def __init__(self, config: Config, admin: URL, database: URL, workdir: Path) -> None:
        self.config = config
        self.admin = admin
        self.database = database
        self.workdir = workdir
        self.plan = workdir / "plan.json"
        self.env = _procs.clean_env({})
        self.users_server: _procs.Server | None = None
        self.empty_server: _procs.Server | None = None
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
            **self.config.service_env,
        }
        self.users_server = _procs.Server(
            "users service",
            _procs.pinned([sys.executable, "-m", "users_service"], self.server_cpus),
            _procs.clean_env(service_env),
        )
        self.empty_server = _procs.Server(
            "empty server",
            _procs.pinned(
                [sys.executable, str(_procs.BENCH / "_empty_server.py"), "127.0.0.1:0"],
                self.server_cpus,
            ),
            self.env,
        )
        await asyncio.gather(self.users_server.start(), self.empty_server.start())
        self.watch = await asyncpg.connect(_pg.dsn(self.admin), timeout=5)

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
                user = await stub.GetUser(users_pb2.GetUserRequest(id=sample_id), timeout=10)
                if server is self.users_server and user.email != sample_email:
                    raise RuntimeError(f"GetUser returned {user.email}, not {sample_email}")
                if server is self.users_server:
                    await stub.AuthenticateUser(
                        users_pb2.AuthenticateUserRequest(email=sample_email, password=PASSWORD),
                        timeout=30,
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
        server: _procs.Server | None,
        duration: float | None = None,
        on_process: Callable[[asyncio.subprocess.Process], None] | None = None,
        on_start: Callable[[], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Run one load-generator phase; its latencies plus who used how much CPU."""
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
            args += [f"--dsn={_pg.dsn(self.database)}", f"--pool-size={self.pool_size()}"]
        else:
            assert server is not None
            args.append(f"--target={server.address}")
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
        return _with_cpu(result, samples, server_pid=server.pid if server else None)

    def pool_size(self) -> int:
        """As many connections as the service's pool may open: the same resources."""
        env = self.config.service_env
        return service_setting("db_pool_size", env) + service_setting("db_max_overflow", env)

    # --- the phases -----------------------------------------------------------------

    async def getuser_against_baselines(self) -> list[dict[str, Any]]:
        rows = []
        for concurrency in self.config.concurrency:
            rounds: dict[str, list[dict[str, Any]]] = {"empty": [], "getuser": [], "asyncpg": []}
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
            row: dict[str, Any] = {"concurrency": concurrency}
            for name, results in rounds.items():
                row[name] = _median_of(results)
                if self.config.rounds > 1:
                    row[name]["rounds"] = results
            row["getuser_per_empty"] = _ratio(row["getuser"], row["empty"])
            row["getuser_per_asyncpg"] = _ratio(row["getuser"], row["asyncpg"])
            # The same ratios from CPU per call: what each costs, whatever else ran on
            # the machine meanwhile (calls/s on a busy machine follow the neighbours).
            row["getuser_per_empty_by_cpu"] = _cpu_ratio(row["getuser"], row["empty"])
            row["getuser_per_asyncpg_by_cpu"] = _cpu_ratio(row["getuser"], row["asyncpg"])
            rows.append(row)
        return rows

    async def list_users(self) -> dict[str, Any]:
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
                    users_pb2.ListUsersRequest(page_size=size, page_token=token), timeout=60
                )
                calls += 1
                walked += len(reply.users)
                token = reply.next_page_token
                if not token:
                    raise RuntimeError(f"the list ended after {walked} rows, before {skip}")
            first = await stub.ListUsers(users_pb2.ListUsersRequest(page_size=PAGE_SIZE))
            deep = await stub.ListUsers(
                users_pb2.ListUsersRequest(page_size=PAGE_SIZE, page_token=token)
            )
        walk_s = time.perf_counter() - started
        if len(deep.users) != PAGE_SIZE or len(first.users) != PAGE_SIZE:
            raise RuntimeError("page 1 or the deep page is not a full page")
        if deep.users[0].create_time.ToDatetime() <= first.users[-1].create_time.ToDatetime():
            raise RuntimeError("the deep page does not lie after page 1")
        self.write_plan(
            list_pages=[["page1", PAGE_SIZE, ""], ["deep", PAGE_SIZE, token]],
        )
        log("ListUsers: page 1 and the deep page, alternating, 1 caller")
        result = await self.phase("list", concurrency=1, server=self.users_server)
        labels = result["labels"]
        return {
            "page_size": PAGE_SIZE,
            "deep_page": self.config.deep_page,
            "rows_before_deep_page": walked,
            "walk_calls": calls,
            "walk_s": walk_s,
            "page1": labels.get("page1"),
            "deep": labels.get("deep"),
            "errors": result["errors"],
            "deep_per_page1_p50": _ratio_of(labels, "deep", "page1", "p50_ms"),
            "deep_per_page1_p99": _ratio_of(labels, "deep", "page1", "p99_ms"),
        }

    async def create_users(self) -> dict[str, Any]:
        log(f"CreateUser: {self.config.create_callers} callers")
        return await self.phase(
            "create", concurrency=self.config.create_callers, server=self.users_server
        )

    async def login_interference(self) -> dict[str, Any]:
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
            "p99_loaded_per_idle": _ratio_of_phases(loaded, idle, "p99_ms"),
            "p50_loaded_per_idle": _ratio_of_phases(loaded, idle, "p50_ms"),
        }

    async def profile(self) -> dict[str, Any] | None:
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
        summary = _profile.summarise(raw, rate=rate, duration=duration)
        summary.update(
            {
                "concurrency": concurrency,
                "raw_stacks": str(raw) if self.config.profile_raw else None,
                "py_spy": message.splitlines()[-1] if message else "",
                "phase": phase,
            }
        )
        return summary

    def write_plan(self, **changes: Any) -> None:
        plan = json.loads(self.plan.read_text()) if self.plan.exists() else {}
        plan.update(changes)
        self.plan.write_text(json.dumps(plan))


def _with_cpu(
    result: dict[str, Any], samples: dict[str, _procs.CpuSample], *, server_pid: int | None
) -> dict[str, Any]:
    """The load generator's result plus CPU use in the window, in cores and µs per call."""
    window = result["window_s"]
    calls = sum(label["calls"] for label in result["labels"].values())

    def per_call(seconds: float | None) -> float | None:
        return seconds / calls * 1e6 if seconds is not None and calls else None

    client = result["client_cpu_s"]
    cpu: dict[str, float | None] = {"client_cores": client / window}
    start, stop = samples.get("start"), samples.get("stop")
    if start is not None and stop is not None:
        used = {pid: max(0.0, s - start.by_pid.get(pid, 0.0)) for pid, s in stop.by_pid.items()}
        server = used.pop(server_pid, 0.0) if server_pid is not None else None
        postgres = sum(used.values())
        busy = stop.busy - start.busy
        opened = (
            stop.pg_sessions - start.pg_sessions
            if stop.pg_sessions is not None and start.pg_sessions is not None
            else None
        )
        cpu.update(
            postgres_backends=len(used),
            # Connections opened in the window: a pool smaller than the callers churns
            # (and the CPU of a backend that came and went in between is not counted).
            postgres_sessions_opened=opened,
            server_cores=server / window if server is not None else None,
            server_us_per_call=per_call(server),
            postgres_cores=postgres / window,
            postgres_us_per_call=per_call(postgres),
            machine_busy_cores=busy / window,
            # What ran besides this benchmark (other people's work): noise.
            other_cores=max(0.0, busy - (server or 0.0) - postgres - client) / window,
        )
    if server_pid is None:
        # The bare asyncpg loop is its own client: its CPU per call is the floor.
        cpu["process_us_per_call"] = per_call(client)
    merged = dict(result)
    merged["cpu"] = cpu
    if len(result["labels"]) == 1:
        merged.update(next(iter(result["labels"].values())))
    return merged


def _median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    if len(results) == 1:
        return results[0]
    # The round with the median throughput stands for all (keeps its figures consistent).
    ordered = sorted(results, key=lambda r: r.get("calls_per_s", 0.0))
    return dict(ordered[len(ordered) // 2])


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    if not a.get("calls_per_s") or not b.get("calls_per_s"):
        return None
    return float(a["calls_per_s"]) / float(b["calls_per_s"])


def _cpu_ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """b's CPU per call over a's: the calls/s ratio a CPU-bound a would reach against b."""

    def per_call(phase: dict[str, Any]) -> float | None:
        cpu = phase.get("cpu") or {}
        value = cpu.get("server_us_per_call") or cpu.get("process_us_per_call")
        return float(value) if value else None

    mine, theirs = per_call(a), per_call(b)
    return theirs / mine if mine and theirs else None


def _ratio_of(labels: dict[str, Any], a: str, b: str, key: str) -> float | None:
    if a not in labels or b not in labels or not labels[b][key]:
        return None
    return float(labels[a][key]) / float(labels[b][key])


def _ratio_of_phases(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    if key not in a or key not in b or not b[key]:
        return None
    return float(a[key]) / float(b[key])
