"""``sysid search``: run a hyper-parameter search (``sysid search SPEC.yaml``) and show its status.

Added to the ``sysid`` group by :mod:`sysid.cli`; the driver is :mod:`sysid.search`.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli import CONTEXT, _activate, _console, _Group, _setup_logging

__all__ = ["search"]


class _SearchGroup(_Group):
    """``sysid search SPEC.yaml`` is ``sysid search run SPEC.yaml``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


@click.group(cls=_SearchGroup, context_settings=CONTEXT)
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
def run(spec_file: Path, dry_run: bool, poll: float, timeout: float | None) -> None:
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
    _print_status(spec.study)
    if not result.done:
        click.echo(f"timeout: {result.running} trial(s) still running; run again to continue")


@search.command("status", context_settings=CONTEXT)
@click.argument("study", required=False)
def status(study: str | None) -> None:
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
            counts = _summary(name["study_name"])["counts"]
            rows.append({"study": name["study_name"], "objective": name["objective"], **counts})
        _console().print(dataframe_table(pd.DataFrame(rows), title="studies", empty="no studies yet"))
        return
    _print_status(study)


def _summary(study: str) -> dict:
    from .search import study_summary

    return study_summary(study)


def _print_status(study: str) -> None:
    from .render import dataframe_table

    summary = _summary(study)
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
