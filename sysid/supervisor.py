"""One worker process per GPU of a machine (or K per GPU), supervised: ``sysid worker --gpus all``.

The supervisor starts ``per_gpu`` worker processes for every GPU, each seeing only its GPU through
``CUDA_VISIBLE_DEVICES`` (so the trainer's "cuda" is that GPU), and watches them:

* a worker that crashes (non-zero exit, killed by a signal) is restarted after a back-off that
  doubles each time (2 s, 4 s ... at most a minute), at most ``max_restarts`` times in a row; a run
  longer than ``stable_after`` seconds resets the count. A worker that exits 0 (``--once``,
  ``--max-idle``, ``--max-jobs``) is done and not restarted.
* SIGTERM or SIGINT is forwarded to every worker as SIGTERM (each checkpoints its training at the
  epoch end and releases its job); none is restarted; a second signal is forwarded too (the
  workers then exit at once). ``max_runtime`` does the same when the time is up.

The workers run in their own sessions, so a Ctrl-C in the terminal reaches them once, through the
supervisor, and on Linux they get SIGTERM if the supervisor itself dies. This module imports
neither torch nor the database: the supervisor only manages processes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .retry import backoff_seconds

__all__ = ["Slot", "Supervisor", "parse_gpus", "visible_gpus"]

log = logging.getLogger("sysid.supervisor")

_GPU_ID = re.compile(r"\d+|(?:GPU|MIG)-[0-9A-Za-z/-]+")


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else those nvidia-smi lists.

    Falls back to torch's device count when nvidia-smi is missing. Returns ids as strings
    (indices, or GPU/MIG UUIDs when ``CUDA_VISIBLE_DEVICES`` names them so).
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("nvidia-smi failed (%s); asking torch", err)
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(spec: str) -> list[str]:
    """The GPU ids of a ``--gpus`` value: ``"all"`` (see :func:`visible_gpus`) or a list ``"0,1,3"``.

    Args:
        spec: ``all``, or comma-separated GPU indices or UUIDs (``GPU-...``, ``MIG-...``).

    Raises:
        ValueError: a malformed or repeated id, or ``all`` on a machine without GPUs.
    """
    spec = spec.strip()
    if spec == "all":
        gpus = visible_gpus()
        if not gpus:
            raise ValueError(
                "--gpus all: no GPU found (CUDA_VISIBLE_DEVICES, nvidia-smi and torch show none). "
                "On a CPU-only machine run workers without --gpus: `sysid worker --device cpu "
                "--threads 1` (one per core), or name GPUs explicitly: --gpus 0,1"
            )
        return gpus
    gpus = [item.strip() for item in spec.split(",")]
    bad = [g for g in gpus if not _GPU_ID.fullmatch(g)]
    if not spec or bad:
        raise ValueError(f"invalid --gpus {spec!r}: use all, or GPU indices/UUIDs such as 0,1,3")
    repeated = sorted({g for g in gpus if gpus.count(g) > 1})
    if repeated:
        raise ValueError(f"--gpus {spec!r} names GPU {', '.join(repeated)} twice (use --per-gpu K instead)")
    return gpus


@dataclass
class Slot:
    """One supervised worker: the GPU it sees, its number on that GPU and its process."""

    gpu: str
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    restarts: int = 0  # crashes in a row
    restart_at: float | None = None
    finished: bool = False
    gave_up: bool = False
    exit_codes: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``gpu<id>.<index>``, the label of this worker's log lines."""
        return f"gpu{self.gpu}.{self.index}"


class Supervisor:
    """Start and supervise ``per_gpu`` copies of ``command`` for each GPU of ``gpus``.

    Args:
        command: the worker command line (e.g. ``[python, "-m", "sysid", "worker", "--once"]``);
            ``--log-tag <slot>`` is appended when ``tag_option`` is set.
        gpus: GPU ids; each worker gets ``CUDA_VISIBLE_DEVICES=<id>``.
        per_gpu: workers per GPU (several suit small models).
        max_restarts: restarts of a crashing worker in a row before its slot is given up.
        stable_after: a worker that ran this many seconds has its crash count reset.
        backoff_cap: the longest wait (seconds) before a restart.
        max_runtime: seconds after which every worker is sent SIGTERM (None: no limit).
        env: the workers' environment (default: this process's).
        tag_option: the worker option that receives the slot's label (None: not passed).
        poll: seconds between checks of the workers.
    """

    def __init__(
        self,
        command: Sequence[str],
        gpus: Sequence[str],
        per_gpu: int = 1,
        max_restarts: int = 5,
        stable_after: float = 600.0,
        backoff_cap: float = 60.0,
        max_runtime: float | None = None,
        env: Mapping[str, str] | None = None,
        tag_option: str | None = "--log-tag",
        poll: float = 0.2,
    ):
        if per_gpu < 1:
            raise ValueError(f"per_gpu must be >= 1, got {per_gpu}")
        if not gpus:
            raise ValueError("no GPUs to supervise workers on")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        self.command = list(command)
        self.slots = [Slot(str(gpu), i) for gpu in gpus for i in range(per_gpu)]
        self.max_restarts = max_restarts
        self.stable_after = stable_after
        self.backoff_cap = backoff_cap
        self.max_runtime = max_runtime
        self.env = dict(os.environ if env is None else env)
        self.tag_option = tag_option
        self.poll = poll
        self.signals = 0
        self._timed_out = False

    # ------------------------------------------------------------------ processes
    def _start(self, slot: Slot) -> None:
        env = dict(self.env, CUDA_VISIBLE_DEVICES=slot.gpu)
        command = [*self.command, *([self.tag_option, slot.name] if self.tag_option else [])]
        slot.process = subprocess.Popen(
            command, env=env, start_new_session=True, preexec_fn=_die_with_parent()
        )
        slot.started = time.monotonic()
        slot.restart_at = None
        log.info("started worker %s (pid %d, CUDA_VISIBLE_DEVICES=%s)", slot.name, slot.process.pid, slot.gpu)

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            slot.restart_at = None  # nothing is restarted once stopping
            if slot.process is not None and slot.process.poll() is None:
                try:
                    slot.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _on_signal(self, signum: int, frame) -> None:
        self.signals += 1
        log.warning(
            "%s received: forwarding SIGTERM to %d worker(s)%s",
            signal.Signals(signum).name,
            sum(1 for s in self.slots if s.process is not None and s.process.poll() is None),
            "" if self.signals == 1 else " again (they exit at once)",
        )
        self._signal_all(signal.SIGTERM)

    def _reap(self, slot: Slot, now: float) -> None:
        code = slot.process.returncode
        slot.exit_codes.append(code)
        ran = now - slot.started
        slot.process = None
        if code == 0:
            slot.finished = True
            log.info("worker %s finished (exit 0 after %.0f s)", slot.name, ran)
            return
        if self.stopping:
            slot.finished = True
            log.info("worker %s ended (exit %s) while stopping", slot.name, code)
            return
        if ran >= self.stable_after:
            slot.restarts = 0
        if slot.restarts >= self.max_restarts:
            slot.gave_up = slot.finished = True
            log.error(
                "worker %s crashed (exit %s) %d time(s) in a row: not restarted again",
                slot.name,
                code,
                slot.restarts + 1,
            )
            return
        wait = min(backoff_seconds(slot.restarts + 1, cap=self.backoff_cap), self.backoff_cap)
        slot.restarts += 1
        slot.restart_at = now + wait
        log.warning(
            "worker %s crashed (exit %s after %.0f s); restart %d/%d in %.1f s",
            slot.name,
            code,
            ran,
            slot.restarts,
            self.max_restarts,
            wait,
        )

    @property
    def stopping(self) -> bool:
        """True once a stop signal arrived or ``max_runtime`` passed."""
        return self.signals > 0 or self._timed_out

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Start the workers and supervise them until all have ended.

        Returns:
            0 when every worker ended cleanly (or on a stop signal), 1 when a slot was given up.
        """
        self._timed_out = False
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        started = time.monotonic()
        try:
            log.info(
                "supervising %d worker(s) on GPU(s) %s: %s",
                len(self.slots),
                ",".join(dict.fromkeys(s.gpu for s in self.slots)),
                " ".join(self.command),
            )
            for slot in self.slots:
                if self.stopping:  # a signal during the start: the others are not started
                    break
                self._start(slot)
            while not all(slot.finished for slot in self.slots):
                time.sleep(self.poll)
                now = time.monotonic()
                if self.max_runtime is not None and not self.stopping and now - started >= self.max_runtime:
                    self._timed_out = True
                    log.warning("--max-runtime reached: sending SIGTERM to the workers")
                    self._signal_all(signal.SIGTERM)
                for slot in self.slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        self._reap(slot, now)
                    elif slot.process is None and not slot.finished:
                        if self.stopping:
                            slot.finished = True  # a restart that was waiting is cancelled
                        elif slot.restart_at is not None and now >= slot.restart_at:
                            self._start(slot)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._signal_all(signal.SIGTERM)  # an exception here must not leave workers behind
        gave_up = [slot.name for slot in self.slots if slot.gave_up]
        if gave_up:
            log.error("gave up on worker(s) %s", ", ".join(gave_up))
            return 1
        log.info("all %d worker(s) ended", len(self.slots))
        return 0


def _die_with_parent():
    """A ``preexec_fn`` that has Linux send the child SIGTERM when the supervisor dies (else None)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec
