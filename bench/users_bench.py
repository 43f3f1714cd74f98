"""Benchmark of the users service, run on demand (never part of the test suite).

    .venv/bin/python bench/users_bench.py [--quick] [--users N] [--duration S]
        [--json PATH] [--profile] [--pin] [--rounds R] [--keep-db]

It creates its own PostgreSQL database, applies the real migrations, seeds N users
with COPY, starts the users service (`python -m users_service`) and an empty gRPC
server built with servicekit (bench/_empty_server.py) as real processes, and drives
them from separate load-generator processes (bench/_loadgen.py). It measures

- GetUser calls/s and latency at 1, 16 and 64 callers, next to an empty RPC through
  the same plumbing and the same primary-key SELECT from a bare asyncpg loop;
- ListUsers page 1 against a page far down (half the table by default), with a
  page token got by walking the API;
- CreateUser calls/s, and the cost of one argon2id hash at the service's parameters;
- GetUser p99 while 16 logins (AuthenticateUser) run, against idle;
- IssueToken calls/s: password grants (logins) and refresh-token rotations;

prints a report with the targets (PASS/FAIL) and writes it as JSON with --json. The
database is dropped at the end, also on Ctrl-C or SIGTERM; one left by a killed run
is dropped by the next run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _pg
import _procs
import _report
import _usersreport
from _config import (
    PAGE_SIZE,
    PASSWORD,
    UsersConfig,
    add_common_options,
    add_env_option,
    env_pairs,
    log,
)
from _facts import Argon2Cost, argon2_params, machine_facts, measure_argon2
from _phases import Bench, select_by_id_sql
from _report import Seed

from tests.support.postgres import admin_url


def _argon2(config: UsersConfig) -> tuple[Argon2Cost, str]:
    """Time argon2id at the service's parameters; the hash every seeded account shares."""
    params = argon2_params(config.service_env)
    log(f"argon2id: {config.argon2_samples} hashes at {params}")
    cost = measure_argon2(params, config.argon2_samples)
    hasher = params.hasher()
    password_hash = hasher.hash(PASSWORD)
    # Logins must not upgrade the seeded hash: that would turn each into a write.
    assert not hasher.check_needs_rehash(password_hash)
    return cost, password_hash


async def _prepare(bench: Bench, password_hash: str) -> tuple[float, Seed]:
    """Migrate, seed, start both servers and check them with one real call each; how
    long the migrations took, and the seeding."""
    config = bench.config
    started = time.perf_counter()
    await _pg.migrate(bench.database, bench.env)
    migrate_s = time.perf_counter() - started
    log(f"seeding {config.users:,} users")
    seeded = await _pg.seed(
        bench.database,
        users=config.users,
        password_hash=password_hash,
        sample=config.sample_ids,
        rng=random.Random(config.seed),
    )
    log(f"seeded: {_report.timings(seeded.timings)}")
    bench.write_plan(
        ids=seeded.sample_ids,
        emails=seeded.sample_emails[: max(config.login_callers, 1)],
        password=PASSWORD,
        sql=select_by_id_sql(),
    )
    await bench.start_servers()
    await bench.check_servers(seeded.sample_ids[0], seeded.sample_emails[0])
    return migrate_s, {"users": seeded.users, "timings": seeded.timings}


async def run(config: UsersConfig) -> _usersreport.Results:
    _procs.cancel_on_signals(log)

    started = time.perf_counter()
    machine = machine_facts()
    admin = admin_url(config.admin_url)
    machine["versions"]["PostgreSQL"] = await _pg.server_version(admin)
    argon2, password_hash = _argon2(config)
    with tempfile.TemporaryDirectory(prefix="users_bench_") as workdir:
        async with _pg.own_database(admin, keep=config.keep_db) as database:
            bench = Bench(config, admin, database, Path(workdir))
            try:
                migrate_s, seed = await _prepare(bench, password_hash)
                getuser = await bench.getuser_against_baselines()
                listing = await bench.list_users()
                interference = await bench.login_interference()
                tokens = await bench.token_endpoints()
                create = await bench.create_users()
                profile = await bench.profile() if config.profile else None
            finally:
                with contextlib.suppress(Exception):
                    await bench.stop_servers()
    return {
        "machine": machine,
        "config": config,
        "argon2": argon2,
        "migrate_s": migrate_s,
        "seed": seed,
        "getuser": getuser,
        "list_users": listing,
        "interference": interference,
        "tokens": tokens,
        "create_user": create,
        "profile": profile,
        "elapsed_s": time.perf_counter() - started,
        "targets": _usersreport.targets(getuser, listing, interference),
        "notes": _usersreport.notes(getuser, listing, interference, tokens, create),
    }


def parse_args(argv: Sequence[str] | None = None) -> UsersConfig:
    parser = argparse.ArgumentParser(
        prog="users_bench.py",
        description="Benchmark of the users service (creates and drops its own database).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 users, 2 s phases")
    parser.add_argument("--users", type=int, help="users to seed (default 1,000,000)")
    parser.add_argument("--duration", type=float, help="seconds measured per phase (default 10)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load before each")
    parser.add_argument(
        "--concurrency", default="1,16,64", help="GetUser caller counts (default 1,16,64)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat GetUser phases; median")
    parser.add_argument(
        "--deep-page", type=int, help="ListUsers page to compare with page 1 (default: middle)"
    )
    parser.add_argument("--login-callers", type=int, default=16)
    parser.add_argument("--interference-callers", type=int, default=4)
    parser.add_argument("--create-callers", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels per client")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="servers (and the bare asyncpg loop) on cpu 0, load generators on cpu 1; "
        "the service's argon2 thread then shares cpu 0 with its event loop",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the users service")
    parser.add_argument("--profile-raw", help="keep py-spy's collapsed stacks in this file")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database")
    add_common_options(parser)
    add_env_option(
        parser,
        "--service-env",
        "USERS_",
        server="the users service",
        example="USERS_DB_POOL_SIZE=20",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the test data")
    args = parser.parse_args(argv)
    service_env = env_pairs(parser, "--service-env", args.service_env, "USERS_")
    users = args.users or (20_000 if args.quick else 1_000_000)
    duration = args.duration or (2.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    deep_page = args.deep_page or max(2, users // 2 // PAGE_SIZE)
    if (deep_page - 1) * PAGE_SIZE + PAGE_SIZE > users:
        parser.error(f"--deep-page {deep_page} lies beyond {users} users")
    return UsersConfig(
        users=users,
        duration=duration,
        warmup=warmup,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        rounds=max(1, args.rounds),
        deep_page=deep_page,
        login_callers=args.login_callers,
        interference_callers=args.interference_callers,
        create_callers=args.create_callers,
        sample_ids=min(65_536, users),
        argon2_samples=5 if args.quick else 20,
        channels=args.channels,
        pin=args.pin and (os.cpu_count() or 1) >= 2,
        profile=args.profile,
        profile_raw=args.profile_raw,
        keep_db=args.keep_db,
        json_path=args.json_path,
        admin_url=args.admin_url,
        service_env=service_env,
        seed=args.seed,
        quick=args.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    return _report.run_and_report(run(config), _usersreport.render, config.json_path, log)


if __name__ == "__main__":
    raise SystemExit(main())
