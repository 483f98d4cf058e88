"""The search driver: asks Optuna for trials, registers them for the workers, tells Optuna the scores.

``sysid search SPEC.yaml`` (in :mod:`sysid.cli`) runs :class:`SearchDriver` (the spec format: :mod:`sysid.search_spec`).
Each round (:meth:`SearchDriver.step`), under a server lock on the study:

1. every running trial whose trained models (one per seed) are all stored is told its objective
   (the mean over seeds); a trial with a failed job is told as failed; a trial a worker pruned is
   already told (its ``TrialOutcome`` says so);
2. new trials are asked until ``parallelism`` are pending or ``n_trials`` were asked; each is
   registered like any registration file (validated configs, an ``Experiments`` entry named after
   the study) and recorded in ``SearchTrial``, so the workers train it.

Everything the driver knows is in the database (Optuna's storage and the tables), so it can be
stopped and started again, and several drivers may run on one study: a trial Optuna handed out but
that was not registered yet (the driver died in between) is registered by the next round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .register import parse_plan, register_plan, validate_plan
from .search_spec import SearchSpec, SearchSpecError, trial_document, validate_spec

__all__ = ["SearchDriver", "StepResult", "make_sampler", "study_summary", "write_search_report"]

log = logging.getLogger("sysid.search")

#: the trial key columns of the trained model a run of a trial is
_CONFIG_KEYS = ("dataset_fn", "dataset_hash", "model_fn", "model_hash", "trainer_fn", "trainer_hash")


def make_sampler(spec: SearchSpec):
    """The Optuna sampler the spec names (TPE with a constant liar when trials run in parallel)."""
    import optuna

    options = dict(spec.sampler_options)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(constant_liar=spec.parallelism > 1, **options)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(**options)

    class DriverGridSampler(optuna.samplers.GridSampler):
        """Optuna's grid sampler without its ``study.stop()`` once the grid is used up.

        That call only works inside ``study.optimize``; the driver stops asking by itself after
        ``SearchSpec.total_trials()`` (at most the grid's size).
        """

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return DriverGridSampler(spec.grid(), **options)


def _distributions(spec: SearchSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for p in spec.parameters:
        if p.type == "categorical":
            out[p.name] = CategoricalDistribution(list(p.choices))
        elif p.type == "int":
            out[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            out[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)
    return out


@dataclass
class StepResult:
    """What one round of the driver did.

    Attributes:
        told: trials told to Optuna this round (complete or failed).
        asked: trials asked and registered this round.
        running: trials running after the round.
        finished: trials finished (complete, pruned, failed) after the round.
        done: every trial of the study was asked and has finished.
        seconds: wall time of the round.
    """

    told: int
    asked: int
    running: int
    finished: int
    done: bool
    seconds: float


class SearchDriver:
    """Runs one study of a spec on the active database (``schemas.activate()`` first).

    Args:
        spec: the parsed spec (:func:`sysid.search_spec.load_spec`).
        schemas: the activated ``schemas`` package.
        validator: passed to :func:`sysid.register.validate_plan` (default: signature checks).
    """

    def __init__(self, spec: SearchSpec, schemas: Any, validator: Callable | None = None):
        self.spec = spec
        self.schemas = schemas
        self.validator = validator
        self.study = None
        self.step_seconds: list[float] = []

    # -------------------------------------------------------------------------------- setup

    def prepare(self) -> None:
        """Validate the spec, then create (or join) the study: ``Study`` row and Optuna study.

        Raises:
            SearchSpecError: the spec is invalid, or a study of that name exists with another spec.
                Nothing is written then.
        """
        import optuna

        from schemas import search_tables as st

        validate_spec(self.spec, validator=self.validator, source=f"study {self.spec.study!r}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = self.spec.study
        with st.search_lock(name):
            rows = (st.Study() & {"study_name": name}).to_dicts()
            if rows:
                stored = rows[0]["spec"]
                stored = json.loads(stored) if isinstance(stored, str) else stored
                if _canonical(stored) != _canonical(self.spec.document):
                    raise SearchSpecError(
                        [f"study {name!r} exists with another spec: give the search a new name"],
                        source=f"study {name!r}",
                    )
            else:
                self._insert_study()
            self.study = optuna.create_study(
                study_name=name,
                storage=st.optuna_storage(),
                sampler=make_sampler(self.spec),
                pruner=st.make_pruner(self.spec.pruner, self.spec.pruner_options),
                direction=self.spec.direction,
                load_if_exists=True,
            )
            if not rows and not self.study.trials:
                for params in self.spec.enqueue:
                    self.study.enqueue_trial(params)

    def _insert_study(self) -> None:
        from schemas import search_tables as st
        from schemas.configs import Experiments, Fabrikant

        fabrikant = self.spec.fabrikant
        fabrikant_name = fabrikant["name"] if isinstance(fabrikant, Mapping) else fabrikant
        with st.Study.connection.transaction:
            Experiments().insert1(
                {
                    "experiment_name": self.spec.study,
                    "experiment_fabrikant": Fabrikant.ensure(fabrikant_name),
                    "experiment_comment": f"search: {self.spec.comment}"[:512],
                },
                skip_duplicates=True,
            )
            st.Study().insert1(
                {
                    "study_name": self.spec.study,
                    "experiment_name": self.spec.study,
                    "objective": self.spec.objective,
                    "direction": self.spec.direction,
                    "sampler": self.spec.sampler,
                    "pruner": self.spec.pruner,
                    "n_trials": self.spec.total_trials(),
                    "spec": self.spec.document,
                }
            )

    # -------------------------------------------------------------------------------- rounds

    def step(self) -> StepResult:
        """One round: tell finished trials, ask and register new ones (under the study's lock)."""
        from optuna.trial import TrialState

        from schemas import search_tables as st

        if self.study is None:
            self.prepare()
        started = time.perf_counter()
        name = self.spec.study
        told = asked = 0
        with st.search_lock(name):
            trials = self.study.get_trials(deepcopy=False)
            registered = {r["trial_number"]: r for r in (st.SearchTrial() & {"study_name": name}).to_dicts()}
            outcomes = {
                r["trial_number"] for r in (st.TrialOutcome() & {"study_name": name}).proj().to_dicts()
            }
            running = [t for t in trials if t.state == TrialState.RUNNING]
            for trial in running:
                if trial.number not in registered:  # asked by a driver that stopped before registering it
                    self._register(trial.number, self._complete_params(trial))
            told = self._tell_finished([t.number for t in running if t.number in registered], registered)
            for trial in trials:  # a driver (or worker) stopped between telling Optuna and the outcome row
                if trial.state.is_finished() and trial.number not in outcomes and trial.number in registered:
                    self._record(trial)
            trials = self.study.get_trials(deepcopy=False)
            n_running = sum(t.state == TrialState.RUNNING for t in trials)
            n_asked = sum(t.state != TrialState.WAITING for t in trials)
            total = self.spec.total_trials()
            distributions = _distributions(self.spec)
            while n_running < self.spec.parallelism and n_asked < total:
                trial = self.study.ask(distributions)
                self._register(trial.number, trial.params)
                n_running += 1
                n_asked += 1
                asked += 1
        seconds = time.perf_counter() - started
        self.step_seconds.append(seconds)
        finished = n_asked - n_running
        return StepResult(told, asked, n_running, finished, n_asked >= total and n_running == 0, seconds)

    def run(
        self, poll: float = 5.0, timeout: float | None = None, on_step: Callable | None = None
    ) -> StepResult:
        """Run rounds every ``poll`` seconds until every trial finished (or ``timeout`` seconds passed).

        Args:
            poll: seconds between rounds.
            timeout: give up after this many seconds (None: never); the study stays as it is.
            on_step: called with each :class:`StepResult` (e.g. a progress bar).

        Returns:
            The last round's result (``done`` tells whether the study finished).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            result = self.step()
            if on_step is not None:
                on_step(result)
            if result.done or (deadline is not None and time.monotonic() >= deadline):
                return result
            time.sleep(poll)

    # -------------------------------------------------------------------------------- helpers

    def _complete_params(self, frozen) -> dict[str, Any]:
        """The values of a trial asked by a driver that stopped before it had sampled all of them.

        The missing values are sampled now (by the study's sampler, on the same Optuna trial).
        """
        import optuna

        from schemas import search_tables as st

        missing = [p for p in self.spec.parameters if p.name not in frozen.params]
        if not missing:
            return dict(frozen.params)
        storage = st.optuna_storage()
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.spec.study), frozen.number
        )
        handle = optuna.trial.Trial(self.study, trial_id)
        for p in missing:
            if p.type == "categorical":
                handle.suggest_categorical(p.name, list(p.choices))
            elif p.type == "int":
                handle.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
            else:
                handle.suggest_float(p.name, float(p.low), float(p.high), step=p.step, log=p.log)
        return dict(handle.params)

    def _register(self, number: int, params: Mapping[str, Any]) -> None:
        """Register trial ``number``'s configs (validated), its experiment rows and ``SearchTrial``."""
        from optuna.trial import TrialState

        from schemas import search_tables as st

        name = self.spec.study
        source = f"study {name!r} trial {number}"
        try:
            plan = parse_plan(trial_document(self.spec, params), source)
            validate_plan(plan, validator=self.validator, source=source)
        except ValueError as err:  # the sampled values make an invalid config: the trial fails
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d failed before training: %s", number, err)
            return
        keys = register_plan(plan, self.schemas)
        storage = st.optuna_storage()
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(name), number
        )
        config_key = {**keys["dataset"][0], **keys["model"][0], **keys["trainer"][0]}
        trial_key = {"study_name": name, "trial_number": int(number)}
        with st.SearchTrial.connection.transaction:
            st.SearchTrial().insert1(
                {**trial_key, "trial_id": int(trial_id), **config_key, "params": dict(params)}
            )
            st.SearchTrial.Run().insert([{**trial_key, "seed": s} for s in self.spec.seeds])
        log.info("trial %d registered: %s", number, ", ".join(f"{k}={v}" for k, v in params.items()))

    def _tell_finished(self, numbers: list[int], registered: Mapping[int, Mapping[str, Any]]) -> int:
        """Tell Optuna every trial of ``numbers`` whose runs are all stored (or one failed)."""
        from optuna.trial import TrialState

        if not numbers:
            return 0
        runs = {
            n: [{**_pick(registered[n], _CONFIG_KEYS), "seed": s} for s in self.spec.seeds] for n in numbers
        }
        all_keys = [k for keys in runs.values() for k in keys]
        values, errors = self._objective_values(all_keys)
        told = 0
        for number, keys in runs.items():
            failed = [errors[_ident(k)] for k in keys if _ident(k) in errors]
            if failed:
                frozen = self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                self._record(frozen, message=failed[0])
                told += 1
            elif all(_ident(k) in values for k in keys):
                value = sum(values[_ident(k)] for k in keys) / len(keys)
                frozen = self.study.tell(number, value, skip_if_finished=True)
                self._record(frozen)
                told += 1
        return told

    def _objective_values(self, keys: list[dict[str, Any]]) -> tuple[dict[tuple, float], dict[tuple, str]]:
        """``({run: objective}, {run: error message})`` of the runs that are stored or failed."""
        from schemas import _dj_compat

        objective = self.spec.objective
        # the cached table instances: a new one rebuilds its jobs table's definition (dozens of queries)
        cached = self.schemas.computed_tables()
        tables = [cached["TrainedModel"]]
        if objective == "score":
            rows = (tables[0].proj("score") & keys).to_dicts()
            values = {_ident(r): float(r["score"]) for r in rows}
        else:
            tables.append(cached["NeuronScore"])
            rows = (tables[1].proj(objective) & keys).to_dicts()
            values = {_ident(r): float(r[objective]) for r in rows if r[objective] is not None}
        errors: dict[tuple, str] = {}
        for table in tables:
            for row in _dj_compat.job_rows(table, "error", keys):
                errors.setdefault(_ident(row), f"{type(table).__name__}: {row.get('error_message', '')}")
        return values, errors

    def _record(self, frozen, message: str = "") -> None:
        """The ``TrialOutcome`` of a finished trial, from Optuna's record of it."""
        from optuna.trial import TrialState

        from schemas import search_tables as st

        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
            frozen.state
        )
        if state is None:
            return
        value = frozen.value if frozen.state != TrialState.FAIL else None
        epoch = frozen.last_step if frozen.state == TrialState.PRUNED else None
        st.record_outcome(self.spec.study, frozen.number, state, value, pruned_epoch=epoch, message=message)


def _pick(row: Mapping[str, Any], names) -> dict[str, Any]:
    return {n: row[n] for n in names}


def _ident(row: Mapping[str, Any]) -> tuple:
    return (*(row[k] for k in _CONFIG_KEYS), int(row["seed"]))


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------ status, report


def study_summary(study_name: str) -> dict[str, Any]:
    """Counts and the best trial of a study in the active database.

    Returns:
        ``{"study", "objective", "direction", "n_trials", "counts": {state: n}, "best": {...} or None,
        "trials": DataFrame}`` — counts over Optuna's states (complete, running, pruned, failed,
        waiting); ``best`` has ``number``, ``value``, ``params`` and the trained models' keys;
        ``trials`` has one row per trial (number, state, value, pruned epoch, searched values).
    """
    import pandas as pd
    from optuna.trial import TrialState

    from schemas import search_tables as st

    rows = (st.Study() & {"study_name": study_name}).to_dicts()
    if not rows:
        raise ValueError(f"no study named {study_name!r}: see `sysid search status` for the studies")
    study = st.load_optuna_study(study_name)
    trials = study.get_trials(deepcopy=False)
    names = {
        TrialState.COMPLETE: "complete",
        TrialState.RUNNING: "running",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.WAITING: "waiting",
    }
    counts = {n: 0 for n in names.values()}
    for t in trials:
        counts[names[t.state]] += 1
    registered = {r["trial_number"]: r for r in (st.SearchTrial() & {"study_name": study_name}).to_dicts()}
    table = pd.DataFrame(
        [
            {
                "trial": t.number,
                "state": names[t.state],
                "value": t.value if t.state != TrialState.FAIL else None,
                "epochs": t.last_step,
                "model_hash": registered.get(t.number, {}).get("model_hash", "")[:8],
                **t.params,
            }
            for t in trials
        ]
    )
    best = None
    if counts["complete"]:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": dict(b.params)}
        if b.number in registered:
            best["key"] = _pick(registered[b.number], _CONFIG_KEYS)
    return {
        "study": study_name,
        "objective": rows[0]["objective"],
        "direction": rows[0]["direction"],
        "n_trials": int(rows[0]["n_trials"]),
        "counts": counts,
        "best": best,
        "trials": table,
    }


def write_search_report(study_name: str, out_dir, top: int = 4) -> list:
    """PNGs of a study: optimisation history, parameter importances, slice plot of the top parameters.

    Args:
        study_name: a study of the active database.
        out_dir: folder for the files (created).
        top: parameters shown in the slice plot (the most important ones).

    Returns:
        The paths written (importances need two complete trials and two parameters that vary).
    """
    import warnings
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    from schemas import search_tables as st

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = st.load_optuna_study(study_name)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = ovm.plot_optimization_history(study)
        ax.set_title(f"{study_name}: optimisation history")
        paths.append(_save(ax, out / "optimization_history.png"))
        order = list(complete[0].params)
        try:
            importances = optuna.importance.get_param_importances(study)
            order = list(importances)
            ax = ovm.plot_param_importances(study)
            ax.set_title(f"{study_name}: parameter importances")
            paths.append(_save(ax, out / "param_importances.png"))
        except (ValueError, RuntimeError) as err:  # too few trials, or no parameter varies
            log.info("no parameter importances: %s", err)
        axes = ovm.plot_slice(study, params=order[:top])
        paths.append(_save(axes, out / "slice.png"))
    plt.close("all")
    return paths


def _save(ax, path):
    import numpy as np

    first = np.asarray(ax).ravel()[0] if not hasattr(ax, "figure") else ax
    figure = first.figure
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
