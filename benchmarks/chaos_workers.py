"""Chaos run: N workers against one schema while workers are killed and connections dropped.

Real ``sysid worker`` processes train small models on the project's synthetic data
(:func:`sysid.demo.make_demo_data`) in a fresh schema. A chaos loop, for ``--duration`` seconds,
every ``--interval`` seconds (randomised) does one of: SIGKILL a random worker, SIGTERM a random
worker, or drop a random worker's database connection (``KILL CONNECTION`` on MariaDB/MySQL,
``pg_terminate_backend`` on PostgreSQL). Workers that end are restarted. Afterwards the workers
finish the queue, and the script checks that every key was trained exactly once (one model row,
no duplicate-key failures, no failed jobs) and that no checkpoint is left, then prints the counts.

Usage::

    python benchmarks/chaos_workers.py --backend embedded --duration 180        # PostgreSQL
    DJ_HOST=127.0.0.1 DJ_USER=root DJ_PASS= python benchmarks/chaos_workers.py --backend mysql
    python benchmarks/chaos_workers.py --duration 20 --seeds 4                  # smoke run

On MySQL the workers connect as a temporary account (granted the run's schema only) so that only
their connections are dropped; the account and the schema are removed at the end (``--keep``
keeps the schema). Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend",
        choices=["embedded", "mysql"],
        default="embedded",
        help="database (default embedded PostgreSQL)",
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of chaos (default 180)")
    parser.add_argument(
        "--interval", type=float, default=3.0, help="mean seconds between chaos events (default 3)"
    )
    parser.add_argument("--seeds", type=int, default=12, help="models to train: one per seed (default 12)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per model (default 4)")
    parser.add_argument(
        "--lease", type=float, default=4.0, help="SYSID_LEASE_SECONDS for the workers (default 4)"
    )
    parser.add_argument(
        "--finish-timeout", type=float, default=600.0, help="seconds to finish the queue after the chaos"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the chaos loop")
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    return parser.parse_args(argv)


def _connect(args, prefix: str):
    import schemas

    schemas.activate(prefix, backend=args.backend)
    return schemas


def _register(schemas, data_path: Path, args) -> int:
    from sysid.demo import demo_grid

    grid = demo_grid(data_path, epochs=args.epochs)
    schemas.Seed.insert([{"seed": s} for s in range(1, args.seeds + 1)], skip_duplicates=True)
    schemas.Dataset.add_entry(grid["dataset"]["fn"], grid["dataset"]["config"])
    schemas.Model.add_entry(grid["model"][0]["fn"], grid["model"][0]["config"])
    schemas.Trainer.add_entry(grid["trainer"]["fn"], {**grid["trainer"]["config"], "device": "cpu"})
    return args.seeds


class Workers:
    """The worker processes, each incarnation logging to its own file."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen | None] = []
        self.started = 0

    def start(self, slot: int) -> None:
        self.started += 1
        log = open(self.log_dir / f"worker{slot}-{self.started}.log", "w")  # noqa: SIM115 (closed with the process)
        command = [sys.executable, "-m", "sysid", "worker", "--device", "cpu", "--threads", "1"]
        command += ["--sleep", "1", "--clear-interval", "2"]
        process = subprocess.Popen(command, env=self.env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT)
        if slot < len(self.processes):
            self.processes[slot] = process
        else:
            self.processes.append(process)

    def restart_ended(self) -> None:
        for slot, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                self.start(slot)

    def stop_all(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            if process is not None:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log")))


def _worker_connections(conn, backend: str, account: str | None) -> list[int]:
    if backend == "mysql":
        rows = conn.query(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER=%s", args=(account,)
        ).fetchall()
    else:
        rows = conn.query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type='client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def _drop(conn, backend: str, connection_id: int) -> None:
    if backend == "mysql":
        conn.query(f"KILL CONNECTION {int(connection_id)}")
    else:
        conn.query("SELECT pg_terminate_backend(%s)", args=(connection_id,))


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="sysid-chaos-"))
    work.chmod(0o755)
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore"
    env["SYSID_LEASE_SECONDS"] = str(args.lease)
    env["SYSID_CACHE_DIR"] = str(work / "cache")
    os.environ["SYSID_LEASE_SECONDS"] = str(args.lease)
    if args.backend == "embedded":
        for name in [k for k in env if k.startswith("DJ_")]:
            env.pop(name)
            os.environ.pop(name, None)
        env["SYSID_HOME"] = os.environ["SYSID_HOME"] = str(work)
    prefix = f"chaos_{uuid.uuid4().hex[:6]}_"
    env["SYSID_SCHEMA_PREFIX"] = prefix

    from sysid.database import quiet_datajoint
    from sysid.demo import make_demo_data

    quiet_datajoint()
    schemas = _connect(args, prefix)
    conn = schemas.active_connection()
    account = None
    if args.backend == "mysql":
        account, password = f"chaos_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
        conn.query("CREATE USER %s@%s IDENTIFIED BY %s", args=(account, "%", password))
        conn.query(f"GRANT ALL PRIVILEGES ON `{schemas.schema_name(prefix)}`.* TO %s@%s", args=(account, "%"))
        env["DJ_USER"], env["DJ_PASS"] = account, password
    counts = dict(jobs=0, sigkill=0, sigterm=0, connection_drops=0, worker_starts=0)
    workers = Workers(env, work)
    try:
        counts["jobs"] = _register(schemas, make_demo_data(work / "data"), args)
        for slot in range(args.workers):
            workers.start(slot)
        began = time.time()
        print(
            f"chaos for {args.duration:.0f} s: {args.workers} workers, {counts['jobs']} jobs, {args.backend}"
        )
        while time.time() - began < args.duration:
            time.sleep(rng.uniform(0.5, 1.5) * args.interval)
            workers.restart_ended()
            action = rng.choice(["sigkill", "sigterm", "drop", "drop"])
            live = [p for p in workers.processes if p is not None and p.poll() is None]
            if action == "drop":
                ids = _worker_connections(conn, args.backend, account)
                if ids:
                    try:
                        _drop(conn, args.backend, rng.choice(ids))
                        counts["connection_drops"] += 1
                    except Exception as error:  # the connection ended by itself meanwhile
                        print(f"drop failed: {error}")
            elif live:
                rng.choice(live).send_signal(signal.SIGKILL if action == "sigkill" else signal.SIGTERM)
                counts[action] += 1
        print("chaos over; letting the workers finish the queue")
        deadline = time.time() + args.finish_timeout
        while time.time() < deadline and len(schemas.TrainedModel()) < counts["jobs"]:
            workers.restart_ended()
            time.sleep(2)
    finally:
        workers.stop_all()
    counts["worker_starts"] = workers.started
    logs = workers.logs()
    counts["reconnects"] = len(
        re.findall(r"reconnected to the database|Reconnecting to database server", logs)
    )
    counts["resumes"] = len(re.findall(r"resuming .* from the checkpoint", logs))
    counts["lease_expiries"] = len(re.findall(r"no heartbeat for over", logs))
    counts["lost_leases"] = len(re.findall(r"is no longer this worker's", logs))
    trained = schemas.TrainedModel().keys()
    counts["trained"] = len(trained)
    counts["duplicates"] = len(re.findall(r"DuplicateError", logs))
    counts["failed_jobs"] = len(schemas.TrainedModel().jobs & "status='error'")
    counts["stale_checkpoints"] = len(schemas.Checkpoint())
    width = max(len(k) for k in counts)
    for name, value in counts.items():
        print(f"{name:<{width}}  {value}")
    ok = (
        counts["trained"] == counts["jobs"]
        and counts["duplicates"] == 0
        and counts["failed_jobs"] == 0
        and counts["stale_checkpoints"] == 0
    )
    if not ok:
        print(f"FAILED: see the worker logs in {work}")
        for row in (schemas.TrainedModel().jobs & "status='error'").to_dicts():
            print(row["error_message"])
    if not args.keep:
        schemas.drop_all()
    if account is not None:
        conn.query("DROP USER %s@%s", args=(account, "%"))
    if args.backend == "embedded":
        from schemas import embedded

        embedded.stop(work / "pgdata")
    print("all keys trained exactly once, no stale checkpoints" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
