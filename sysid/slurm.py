"""Workers as a SLURM job array: the batch script of ``sysid slurm``, its submission, and log tags.

The script runs ``--array=1-N%K`` tasks (at most K at once), each ``srun sysid worker`` on one GPU
(``--gres=gpu:1``; or CPU only), until no job is left (``--max-idle`` empty polls) or the time limit
nears: ``--signal=TERM@<margin>`` has SLURM send SIGTERM to the worker ``margin`` seconds before
the limit, the worker checkpoints its training at the epoch end and releases the job, and the next
array task resumes it from the checkpoint.

No password is written into the script: the database settings travel by name
(``#SBATCH --export=DJ_HOST,DJ_USER,DJ_PASS,...``: sbatch copies their values from the submitting
environment), or from an environment file readable only by its owner (``env_file``), which the
script reads by path. The embedded PostgreSQL server lives on one machine, so a cluster job for it
is refused.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SlurmJob",
    "check_cluster_database",
    "check_secrets_dir",
    "exported_names",
    "job_script",
    "slurm_tag",
    "submit",
    "time_limit_seconds",
    "write_env_file",
]

#: variables besides the pipeline's settings that a worker on a compute node needs
PASSED_THROUGH = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX")
#: settings of the submitting machine only (the embedded server, docker compose)
LOCAL_ONLY = ("SYSID_HOME", "SYSID_DATA_DIR", "MYSQL_ROOT_PASSWORD", "DB_PORT")


def time_limit_seconds(limit: str) -> int:
    """Seconds of a SLURM time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M`` or ``D-H:M:S``.

    Raises:
        ValueError: another form, or not positive.
    """
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(limit).strip())
    if match is None or str(limit).strip() in ("", "UNLIMITED"):
        raise ValueError(
            f"invalid time limit {limit!r}: use SLURM's forms M, M:S, H:M:S, D-H, D-H:M or D-H:M:S"
        )
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if days is None:
        parts = (0, a, 0) if b is None else (0, a, b) if c is None else (a, b, c)
        seconds = parts[0] * 3600 + parts[1] * 60 + parts[2]
    else:
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise ValueError(f"time limit {limit!r} must be positive")
    return seconds


def slurm_tag(environ: Mapping[str, str] | None = None) -> str | None:
    """The SLURM job a process runs in, for log lines: ``"slurm 1234_5"`` (array job 1234, task 5).

    ``"slurm 1234"`` outside arrays; None outside SLURM. The array form is what ``squeue`` and
    ``scancel`` take; the job's own id is added when it differs (``"slurm 1234_5 (job 1239)"``).
    """
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"slurm {array}_{task}" + (f" (job {job})" if job != array else "")
    return f"slurm {job}"


def check_cluster_database(environ: Mapping[str, str] | None = None) -> list[str]:
    """Refuse a database that compute nodes cannot reach; return warnings for doubtful ones.

    Raises:
        ValueError: no ``DJ_HOST`` (the embedded server, local to this machine) or a socket folder.
    """
    from schemas.settings import Settings

    settings = Settings.from_environ(os.environ if environ is None else environ)
    what = "SLURM jobs run on the cluster's nodes, which cannot reach"
    fix = (
        "Set DJ_HOST, DJ_USER and DJ_PASS (and DJ_PORT, DJ_BACKEND) to a database server that every "
        "node reaches, e.g. the `db` service of docker-compose.yml, then run `sysid slurm` again"
    )
    if settings.uses_embedded:
        raise ValueError(
            f"{what} the embedded PostgreSQL server of this machine (DJ_HOST is not set). {fix}."
        )
    if settings.host.startswith("/"):
        raise ValueError(f"{what} a PostgreSQL socket folder (DJ_HOST={settings.host}). {fix}.")
    if settings.host in ("localhost", "::1") or settings.host.startswith("127."):
        return [
            f"DJ_HOST={settings.host} is this machine: only a single-node cluster whose node is "
            "this machine reaches it"
        ]
    return []


def exported_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names (never values) of the variables the jobs get from the submitting environment.

    The pipeline's settings (``DJ_*``, ``SYSID_*`` of :data:`schemas.settings.VARIABLES`, other
    ``DJ_*`` DataJoint reads) that are set, without the ones local to this machine, plus
    :data:`PASSED_THROUGH` (the worker's own ``PATH``, virtualenv ...).
    """
    from schemas.settings import VARIABLES

    env = os.environ if environ is None else environ
    known = [v.name for v in VARIABLES] + sorted(n for n in env if n.startswith("DJ_"))
    names = [n for n in dict.fromkeys(known) if n in env and n not in LOCAL_ONLY]
    return names + [n for n in PASSED_THROUGH if n in env and n not in names]


def check_secrets_dir(folder: Path) -> Path:
    """Check DataJoint's secrets folder for a job: its ``database.*`` files readable by their owner only.

    Returns:
        The folder's absolute path.

    Raises:
        FileNotFoundError: no such folder, or it holds neither ``database.password`` nor ``database.user``.
        PermissionError: one of those files may be read by the group or others.
    """
    folder = Path(folder).expanduser().resolve()
    files = [folder / name for name in ("database.user", "database.password") if (folder / name).is_file()]
    if not folder.is_dir() or not files:
        raise FileNotFoundError(
            f"{folder}: not a DataJoint secrets folder (it needs database.password and/or database.user)"
        )
    for path in files:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path} is readable by others: `chmod 600 {path}` first")
    return folder


def write_env_file(path: Path, names: Sequence[str], environ: Mapping[str, str] | None = None) -> Path:
    """Write ``export NAME=value`` lines for ``names`` into ``path``, readable by its owner only.

    For jobs submitted later from a shell without the settings: the script reads this file by
    path. An existing file is replaced only when nobody else can read it.

    Raises:
        PermissionError: ``path`` exists and its group or others may read it.
    """
    env = os.environ if environ is None else environ
    path = Path(path).expanduser().resolve()
    if path.exists() and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others: remove it or `chmod 600` it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"export {name}={shlex.quote(env[name])}" for name in names if name in env]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        stream.write("# database settings of sysid SLURM jobs (keep private: chmod 600)\n")
        stream.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


@dataclass
class SlurmJob:
    """A job array of workers (see :func:`job_script`).

    Attributes:
        tasks: array tasks in all (``--array=1-tasks``).
        parallel: most tasks running at once (``%parallel``: the GPUs to use at most).
        gpus: GPUs per task (``--gres=gpu:<gpus>``); 0: CPU only (``--device cpu``). Above 1 the
            task runs ``sysid worker --gpus all`` (one supervised worker per GPU of the task).
        per_gpu: workers per GPU when ``gpus`` > 1.
        time_limit: the tasks' time limit in SLURM's format (``HH:MM:SS``, ``D-HH:MM:SS``).
        signal_margin: seconds before the limit at which SIGTERM asks the worker to stop (it
            should exceed the longest epoch).
        cpus_per_task, mem: resources per task (None: the cluster's defaults).
        partition, account, qos: where and on whose budget the tasks run (None: defaults).
        job_name: the array's name (``%x`` in log names).
        log_dir: folder of the tasks' logs, ``<job_name>-<array id>_<task>.out``.
        worker_args: options of ``sysid worker`` after ``--device`` (``--max-idle 3`` ...).
        command: the ``sysid`` command on the nodes (default: this Python's ``-m sysid``).
        exported: variables passed by name (see :func:`exported_names`).
        env_file: a private file with the settings, read by the script (see :func:`write_env_file`).
        secrets_dir: DataJoint's secrets folder (``database.user``, ``database.password`` files),
            read by the script at run time (see :func:`check_secrets_dir`).
        setup: shell lines run before the worker (``module load cuda`` ...).
        sbatch_options: further ``#SBATCH`` options, e.g. ``--constraint=a100``.
        container: an Apptainer image: the worker runs in it (``apptainer exec --nv``).
    """

    tasks: int = 4
    parallel: int | None = None
    gpus: int = 1
    per_gpu: int = 1
    time_limit: str = "04:00:00"
    signal_margin: int = 600
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str = "sysid-worker"
    log_dir: Path = Path("slurm-logs")
    worker_args: Sequence[str] = ("--max-idle", "3", "--sleep", "60")
    command: Sequence[str] = field(default_factory=lambda: (sys.executable, "-m", "sysid"))
    exported: Sequence[str] = ()
    env_file: Path | None = None
    secrets_dir: Path | None = None
    setup: Sequence[str] = ()
    sbatch_options: Sequence[str] = ()
    container: Path | None = None

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {self.tasks}")
        if self.parallel is not None and not 1 <= self.parallel:
            raise ValueError(f"parallel must be >= 1, got {self.parallel}")
        if self.gpus < 0 or self.per_gpu < 1:
            raise ValueError(f"gpus must be >= 0 and per_gpu >= 1, got {self.gpus} and {self.per_gpu}")
        limit = time_limit_seconds(self.time_limit)
        if not 0 < self.signal_margin < limit:
            raise ValueError(
                f"signal margin {self.signal_margin} s must be positive and below the time limit "
                f"{self.time_limit} ({limit:.0f} s)"
            )
        for name in ("job_name", "partition", "account", "qos", "mem"):
            value = getattr(self, name)
            if value is not None and (not str(value) or any(c.isspace() or c == "," for c in str(value))):
                raise ValueError(f"invalid {name} {value!r}: no spaces or commas")

    @property
    def device(self) -> str:
        """The workers' ``--device``."""
        return "cpu" if self.gpus == 0 else "cuda"

    def worker_command(self) -> list[str]:
        """The command line that ``srun`` runs in each task."""
        args = [*self.command, "worker"]
        if self.gpus > 1:
            args += ["--gpus", "all", "--per-gpu", str(self.per_gpu)]
        else:
            args += ["--device", self.device]
        args += list(self.worker_args)
        if self.container is not None:
            nv = ["--nv"] if self.gpus else []
            args = ["apptainer", "exec", *nv, str(self.container), *args]
        return args


def _directives(job: SlurmJob) -> list[str]:
    array = f"1-{job.tasks}" + (f"%{job.parallel}" if job.parallel else "")
    options = [
        f"--job-name={job.job_name}",
        f"--array={array}",
        "--ntasks=1",
        f"--time={job.time_limit}",
        # SIGTERM to the worker (the job step) this long before the limit: checkpoint and release
        f"--signal=TERM@{job.signal_margin}",
        f"--output={Path(job.log_dir).resolve()}/%x-%A_%a.out",
        "--open-mode=append",
    ]
    if job.gpus:
        options.append(f"--gres=gpu:{job.gpus}")
    if job.cpus_per_task:
        options.append(f"--cpus-per-task={job.cpus_per_task}")
    for name in ("mem", "partition", "account", "qos"):
        value = getattr(job, name)
        if value:
            options.append(f"--{name}={value}")
    # only the named variables reach the job; sbatch reads their values when it submits
    names = list(job.exported) or ["NONE"]
    options.append("--export=" + ",".join(names))
    options += list(job.sbatch_options)
    return [f"#SBATCH {option}" for option in options]


def job_script(job: SlurmJob) -> str:
    """The batch script (bash) of ``job``: directives, checks, then ``exec srun <worker>``.

    The script holds variable names and paths, never the values of the database settings.
    """
    command = " ".join(shlex.quote(part) for part in job.worker_command())
    lines = [
        "#!/bin/bash",
        f"# written by `sysid slurm` on {time.strftime('%Y-%m-%d %H:%M')}: {job.tasks} worker task(s) of the",
        "# visual-sysid pipeline, each training pending models until none is left. Submit with",
        "#   sbatch <this file>    (from a shell with the database settings, DJ_HOST ...)",
        *_directives(job),
        "",
        "set -euo pipefail",
    ]
    if job.env_file is not None:
        path = shlex.quote(str(Path(job.env_file).expanduser().resolve()))
        lines += [
            f"env_file={path}",
            'if [ "$(stat -c %a "$env_file")" != 600 ]; then',
            '    echo "sysid: $env_file must be readable by its owner only (chmod 600)" >&2; exit 1',
            "fi",
            'set -a; . "$env_file"; set +a',
        ]
    if job.secrets_dir is not None:
        folder = shlex.quote(str(Path(job.secrets_dir).expanduser().resolve()))
        lines += [
            f"secrets_dir={folder}  # DataJoint's secrets folder: database.user, database.password",
            'if [ -z "${DJ_USER:-}" ] && [ -r "$secrets_dir/database.user" ]; then',
            '    DJ_USER="$(cat "$secrets_dir/database.user")"; export DJ_USER',
            "fi",
            'if [ -r "$secrets_dir/database.password" ]; then',
            '    DJ_PASS="$(cat "$secrets_dir/database.password")"; export DJ_PASS',
            "fi",
        ]
    lines += [
        ': "${DJ_HOST:?is not set: submit from a shell with the database settings (DJ_HOST, DJ_USER, DJ_PASS)}"',
        ': "${DJ_USER:?is not set: submit from a shell with the database settings (DJ_HOST, DJ_USER, DJ_PASS)}"',
        *job.setup,
        'echo "sysid: SLURM job ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0} '
        '(job $SLURM_JOB_ID) on $(hostname) at $(date -u +%FT%TZ), database $DJ_HOST"',
    ]
    if job.gpus == 0:
        # one torch thread per allocated core
        lines.append('export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"')
    # exec: the job step is the batch shell's only child, so the signals reach the worker
    lines += [f"exec srun --kill-on-bad-exit=1 {command}", ""]
    return "\n".join(lines)


def submit(script: Path, environ: Mapping[str, str] | None = None, sbatch: str = "sbatch") -> str:
    """Submit ``script`` with ``sbatch --parsable``; return the job id.

    Raises:
        FileNotFoundError: ``sbatch`` is not installed here.
        RuntimeError: sbatch refused the job (its message is included).
    """
    executable = shutil.which(sbatch)
    if executable is None:
        raise FileNotFoundError(
            f"{sbatch} not found: run `sysid slurm --submit` on a SLURM login node, or write the script "
            "here (without --submit) and submit it there with sbatch"
        )
    result = subprocess.run(
        [executable, "--parsable", str(script)],
        capture_output=True,
        text=True,
        env=dict(os.environ if environ is None else environ),
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed (exit {result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]
