"""Benchmark of the REST gateway path against a monolith, run on demand (never in the tests).

    .venv/bin/python bench/gateway_bench.py [--quick] [--duration S] [--users N]
        [--rounds R] [--json PATH] [--profile | --no-profile]
        [--transport mtls|tls|plaintext]

It creates its own PostgreSQL database, applies the users service's migrations, seeds N
users with COPY, and starts, as real processes, the gateway path (`python -m
users_service`, `python -m gateway`) and the monolith a user would otherwise write
(bench/_monolith.py: one FastAPI + SQLAlchemy app doing the same token check and query,
under uvicorn with 2 workers - as many processes as gateway + users). It signs up a real
account through the gateway, logs in at POST /v1/auth/token (an EdDSA access token
signed by the users service with a key made for the run), checks that both answer the
same for the same request (its own account in full, seeded ones as public profiles),
then loads `GET /v1/users/{id}` with that bearer token and random seeded ids (other
accounts: public profiles) from wrk (a separate process) at 64 connections for a fixed
time, alternating the two targets round by round (ABBA) so that drifting background
load hits both. Then (unless --no-observability) the gateway path again with metrics on,
and with metrics and traces sampled at 10%, against it with both off (bench/_gwobserve.py).
It reports requests/s, p50 and p99 of each (medians of the rounds),
their ratios against the issue's targets, non-2xx responses, and the CPU every process
used. When the gateway path misses a target (or with --profile) it samples the gateway
and the users service with py-spy under the same load and reports where their CPU goes.

The database is dropped at the end, also on Ctrl-C or SIGTERM; one left by a killed run
is dropped by the next run. Needs wrk (`apt-get install -y wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import _gwload
import _gwobserve
import _gwprofile
import _gwreport
import _gwstack
import _pg
import _procs
import _profile
import _report
import httpx
from _config import (
    PASSWORD,
    GatewayConfig,
    add_common_options,
    add_env_option,
    env_pairs,
    log,
)
from _facts import PACKAGES, Machine, argon2_params, machine_facts
from _gwreport import Profiles, Round
from _report import Seed
from sqlalchemy.engine import URL

from tests.support.harness import child_env
from tests.support.postgres import admin_url, dsn

CONNECTIONS = 64
BENCH_EMAIL = "gateway.bench@example.com"
_WORKDIR_PREFIX = "gateway_bench_"
_STALE_WORKDIR = re.compile(rf"^{_WORKDIR_PREFIX}(\d+)_")


@dataclass
class Run:
    config: GatewayConfig
    admin: URL
    database: URL
    workdir: Path
    wrk: str
    stack: _gwstack.Stack | None = None
    meter: _gwload.Meter | None = None
    script: Path | None = None
    plan: Path | None = None
    rng: random.Random = field(default_factory=random.Random)

    def target(self, name: str) -> _gwload.Target:
        assert self.stack is not None
        if name == "gateway":
            return _gwload.Target("gateway", self.stack.gateway_url, ("gateway", "users"))
        return _gwload.Target("monolith", self.stack.monolith_url, ("monolith",))

    async def load(self, name: str, duration: int, *, measured: bool) -> _gwload.WrkResult:
        assert self.stack is not None
        return await self._load(self.target(name), self.stack.pid_groups(), duration, measured)

    async def load_path(
        self, path: _gwstack.GatewayPath, duration: int, *, measured: bool
    ) -> _gwload.WrkResult:
        """The same load on another gateway path (Stack.other_path)."""
        target = _gwload.Target("gateway", path.url, ("gateway", "users"))
        return await self._load(target, path.pid_groups(), duration, measured)

    async def _load(
        self,
        target: _gwload.Target,
        groups: dict[str, list[int]],
        duration: int,
        measured: bool,
    ) -> _gwload.WrkResult:
        assert self.stack is not None
        assert self.script is not None
        assert self.plan is not None
        result = await _gwload.run_wrk(
            self.wrk,
            target,
            script=self.script,
            plan=self.plan,
            connections=self.config.connections,
            duration_s=duration,
            seed=self.rng.randrange(1 << 30),
            groups=groups if measured else None,
            meter=self.meter if measured else None,
        )
        self.stack.check_alive()
        return result


# --- set-up -----------------------------------------------------------------------------


def _drop_stale_workdirs() -> None:
    """Plan files of killed runs (their database is dropped by _pg)."""
    root = Path(tempfile.gettempdir())
    for entry in root.glob(f"{_WORKDIR_PREFIX}*"):
        match = _STALE_WORKDIR.match(entry.name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            shutil.rmtree(entry, ignore_errors=True)


async def _account_token(base_url: str) -> tuple[str, str]:
    """Sign up a real account through the gateway and log in; (its id, a bearer token)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post(
            "/v1/users",
            json={"email": BENCH_EMAIL, "name": "Gateway Bench", "password": PASSWORD},
        )
        if created.status_code != 201:
            raise RuntimeError(f"sign-up failed: {created.status_code} {created.text}")
        login = await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": BENCH_EMAIL, "password": PASSWORD},
        )
        if login.status_code != 200:
            raise RuntimeError(f"login failed: {login.status_code} {login.text}")
        return str(created.json()["id"]), str(login.json()["access_token"])


def _normalised(body: dict[str, Any]) -> dict[str, Any]:
    # Both write RFC 3339 UTC; they may differ in how many fraction digits they print.
    return {
        k: datetime.fromisoformat(v) if k.endswith("_at") else v for k, v in sorted(body.items())
    }


FULL_VIEW = frozenset({"id", "email", "name", "role", "created_at", "updated_at"})
PUBLIC_VIEW = frozenset({"id", "name"})


async def _check_same_answers(run: Run, token: str, own_id: str, others: Sequence[str]) -> None:
    """Both targets answer the same body and ETag, and refuse a request without a token.

    The caller's own account comes in full with an ETag; any other as its public
    profile, without one.
    """
    assert run.stack is not None
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for user_id in [own_id, *others]:
            replies = [
                await client.get(f"{url}/v1/users/{user_id}", headers=headers)
                for url in (run.stack.gateway_url, run.stack.monolith_url)
            ]
            for reply in replies:
                if reply.status_code != 200:
                    await asyncio.sleep(0.5)  # lets the servers' logs reach us
                    raise RuntimeError(
                        f"{reply.url}: {reply.status_code} {reply.text}\n{run.stack.tails()}"
                    )
            gateway, monolith = replies
            if _normalised(gateway.json()) != _normalised(monolith.json()):
                raise RuntimeError(f"different bodies:\n{gateway.text}\n{monolith.text}")
            if gateway.headers.get("etag") != monolith.headers.get("etag"):
                raise RuntimeError("different ETags")
            own = user_id == own_id
            view = FULL_VIEW if own else PUBLIC_VIEW
            if set(gateway.json()) != view or (gateway.headers.get("etag") is None) == own:
                kind = "its own account in full" if own else "another's public profile"
                raise RuntimeError(
                    f"expected {kind} at {gateway.url}: {dict(gateway.headers)} {gateway.text}"
                )
        for url in (run.stack.gateway_url, run.stack.monolith_url):
            anonymous = await client.get(f"{url}/v1/users/{own_id}")
            if anonymous.status_code != 401:
                raise RuntimeError(f"{url} answered {anonymous.status_code} without a token")


async def _prepare(run: Run) -> Seed:
    config = run.config
    await _pg.migrate(run.database, child_env())
    log(f"seeding {config.users:,} users")
    hasher = argon2_params({}).hasher()
    seeded = await _pg.seed(
        run.database,
        users=config.users,
        password_hash=hasher.hash(PASSWORD),
        sample=config.sample_ids,
        rng=random.Random(config.seed),
    )
    log("starting the users service, the gateway and the monolith")
    run.stack = _gwstack.Stack(
        _pg.sqlalchemy_url(run.database),
        workdir=run.workdir,
        monolith_env=config.monolith_env,
        gateway_env=config.gateway_env,
        transport=config.transport,
    )
    await run.stack.start()
    account_id, token = await _account_token(run.stack.gateway_url)
    await _check_same_answers(run, token, account_id, seeded.sample_ids[:5])
    run.script, run.plan = _gwload.write_plan(run.workdir, token, seeded.sample_ids)
    run.meter = _gwload.Meter(dsn(run.admin), str(run.database.database))
    await run.meter.open()
    return {"users": seeded.users, "timings": seeded.timings}


# --- the phases ----------------------------------------------------------------------------


async def _rounds(run: Run) -> list[Round]:
    config = run.config
    phases: list[Round] = []
    for n in range(config.rounds):
        # ABBA: each target goes first as often as the other, so drift hits both alike.
        order = _gwreport.TARGETS if n % 2 == 0 else _gwreport.TARGETS[::-1]
        for name in order:
            log(f"round {n + 1}/{config.rounds}: {name}, {config.warmup} s warm-up")
            warm = await run.load(name, config.warmup, measured=False)
            log(f"round {n + 1}/{config.rounds}: {name}, {config.duration} s measured")
            measured = await run.load(name, config.duration, measured=True)
            phase: Round = {
                **measured,
                "round": n + 1,
                "warmup": {
                    "requests_per_s": warm["requests_per_s"],
                    "non_2xx": warm["non_2xx"],
                    "socket_errors": warm["socket_errors"],
                },
            }
            other = phase["cpu"]["cores"]["other"] if phase["cpu"] else None
            log(
                f"  {phase['requests_per_s']:,.0f} req/s, p50 {phase['p50_ms']:.2f} ms, "
                f"p99 {phase['p99_ms']:.2f} ms, non-2xx {phase['non_2xx']}, other cores "
                f"{_report.fmt(other)}"
            )
            phases.append(phase)
    return phases


async def _observability(run: Run) -> tuple[list[_gwobserve.ObservedRound], dict[str, float]]:
    stack = run.stack
    assert stack is not None
    config = run.config
    # Four times the rounds, each of --duration turns (see bench/_gwobserve.py).
    return await _gwobserve.measure(
        stack.other_path,
        run.load_path,
        stack.new_port,
        rounds=4 * config.rounds,
        warmup=config.warmup,
        turns=config.duration,
        log=log,
    )


async def _profiles(run: Run) -> Profiles | str:
    """py-spy on the gateway path's processes, then on the monolith's, under load; or
    why not."""
    py_spy = _profile.find_py_spy()
    if py_spy is None:
        return "py-spy not found (`.venv/bin/pip install py-spy`); not profiled"
    stack = run.stack
    assert stack is not None
    assert stack.gateway is not None
    assert stack.users is not None
    folder = Path(run.config.profile_dir) if run.config.profile_dir else run.workdir / "profile"
    duration = run.config.duration

    async def load(name: str, seconds: int) -> _gwload.WrkResult:
        return await run.load(name, seconds, measured=True)

    log(f"profile: py-spy on the gateway and the users service, {duration} s under load")
    gateway = await _gwprofile.profile(
        py_spy,
        load,
        target="gateway",
        processes={"gateway": [stack.gateway.pid], "users service": [stack.users.pid]},
        groups={"gateway": "gateway", "users service": "users"},
        duration=duration,
        folder=folder,
    )
    log(f"profile: py-spy on the monolith's workers, {duration} s under load")
    monolith = await _gwprofile.profile(
        py_spy,
        load,
        target="monolith",
        processes={"monolith workers": stack.monolith_workers},
        groups={"monolith workers": "monolith"},
        duration=duration,
        folder=folder,
    )
    return {
        "raw_stacks": str(folder) if run.config.profile_dir else None,
        "gateway": gateway,
        "monolith": monolith,
    }


# --- the run ---------------------------------------------------------------------------------


async def run_bench(config: GatewayConfig) -> _gwreport.Results:
    _procs.cancel_on_signals(log)

    wrk = _gwload.find_wrk()
    assert wrk is not None  # main() checked
    started = time.perf_counter()
    machine = _machine(wrk)
    machine["busy_cores_before"] = await _busy_cores(2.0)
    admin = admin_url(config.admin_url)
    machine["versions"]["PostgreSQL"] = await _pg.server_version(admin)
    _drop_stale_workdirs()
    profile: Profiles | str | None = None
    observed: _gwobserve.Observability | None = None
    coalescing = None
    with tempfile.TemporaryDirectory(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}_") as workdir:
        async with _pg.own_database(admin) as database:
            run = Run(config, admin, database, Path(workdir), wrk, rng=random.Random(config.seed))
            try:
                seed = await _prepare(run)
                assert run.stack is not None
                ports = {
                    "users": run.stack.users_port,
                    "gateway": run.stack.gateway_port,
                    "monolith": run.stack.monolith_port,
                }
                phases = await _rounds(run)
                medians = _gwreport.medians(phases)
                ratios = _gwreport.ratios(phases, medians["gateway"], medians["monolith"])
                targets = _gwreport.targets(phases, ratios)
                if config.observability:
                    observed = _gwobserve.summarise(
                        await _observability(run),
                        ratios["rps"],
                        _gwreport.RPS_RATIO_MIN,
                    )
                    targets += observed["targets"]
                if config.profile or (config.profile is None and _report.missed(targets)):
                    profile = await _profiles(run)
            finally:
                if run.meter is not None:
                    with contextlib.suppress(Exception):
                        await run.meter.close()
                if run.stack is not None:
                    with contextlib.suppress(Exception):
                        await run.stack.stop()
                        coalescing = run.stack.coalescing()
    return {
        "machine": machine,
        "config": config,
        "seed": seed,
        "transport": config.transport,
        "ports": ports,
        "phases": phases,
        "medians": medians,
        "ratios": ratios,
        "targets": targets,
        "profile": profile,
        "observability": observed,
        "coalescing": coalescing,
        "elapsed_s": time.perf_counter() - started,
        "notes": _gwreport.notes(phases, ratios, machine, config.rounds),
    }


async def _busy_cores(seconds: float) -> float:
    """Cores the machine keeps busy before the benchmark starts anything: others' work."""
    busy, _ = _procs.machine_cpu_s()
    await asyncio.sleep(seconds)
    return (_procs.machine_cpu_s()[0] - busy) / seconds


def _machine(wrk: str) -> Machine:
    web = ("FastAPI", "uvicorn", "starlette", "PyJWT", "cryptography", "orjson", "httptools")
    facts = machine_facts({**PACKAGES, **{name: name.lower() for name in web}})
    facts["versions"]["wrk"] = _gwload.wrk_version(wrk)
    return facts


def parse_args(argv: Sequence[str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(
        prog="gateway_bench.py",
        description="The gateway path against a monolith (creates and drops its own database).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 20,000 users, 1 round of 3 s phases"
    )
    parser.add_argument("--users", type=int, help="users to seed (default 100,000)")
    parser.add_argument("--duration", type=int, help="seconds measured per phase (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of unmeasured load before each")
    parser.add_argument("--rounds", type=int, help="rounds of both targets (default 3); medians")
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument(
        "--profile", action="store_true", default=None, help="always py-spy the gateway path"
    )
    profile.add_argument("--no-profile", dest="profile", action="store_false", help="never profile")
    parser.add_argument("--profile-dir", help="keep py-spy's raw stacks in this folder")
    parser.add_argument(
        "--no-observability",
        dest="observability",
        action="store_false",
        help="skip measuring what metrics and traces cost",
    )
    add_common_options(parser)
    add_env_option(
        parser,
        "--monolith-env",
        "MONOLITH_",
        server="the monolith",
        example="MONOLITH_AUTOCOMMIT=false",
    )
    add_env_option(
        parser,
        "--gateway-env",
        "GATEWAY_",
        server="the gateway",
        example="GATEWAY_COALESCE_READS=false",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the test data")
    parser.add_argument(
        "--transport",
        choices=("plaintext", "tls", "mtls"),
        default="mtls",
        help="gateway to users service: mTLS as in production (default), TLS, or plaintext",
    )
    args = parser.parse_args(argv)
    users = args.users or (20_000 if args.quick else 100_000)
    duration = args.duration or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 3)
    if users < 1 or duration < 1 or warmup < 1 or rounds < 1 or args.connections < 1:
        parser.error("--users, --duration, --warmup, --rounds and --connections must be >= 1")
    return GatewayConfig(
        users=users,
        duration=duration,
        warmup=warmup,
        rounds=rounds,
        connections=args.connections,
        sample_ids=min(10_000, users),
        profile=args.profile,
        profile_dir=args.profile_dir,
        json_path=args.json_path,
        admin_url=args.admin_url,
        monolith_env=env_pairs(parser, "--monolith-env", args.monolith_env, "MONOLITH_"),
        gateway_env=env_pairs(parser, "--gateway-env", args.gateway_env, "GATEWAY_"),
        seed=args.seed,
        quick=args.quick,
        transport=args.transport,
        observability=args.observability,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    if _gwload.find_wrk() is None:
        log(_gwload.WRK_MISSING)
        return 2
    return _report.run_and_report(run_bench(config), _gwreport.render, config.json_path, log)


if __name__ == "__main__":
    raise SystemExit(main())
