"""Safety of registration and workers: allowed functions, safe result filters, atomic and typed registration."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from pipeline import builder
from sysid.register import RegistrationError, parse_plan, validate_plan

# ------------------------------------------------------------------------- allowed function prefixes


@pytest.mark.parametrize(
    "path",
    ["os.system", "subprocess.run", "builtins.eval", "pipeline.builder.Callable", "sensorium.models.Mapping"],
)
def test_functions_outside_the_allowed_prefixes_do_not_resolve(path):
    with pytest.raises(builder.FunctionNotAllowed, match="not allowed"):
        builder.resolve_fn(path)


def test_the_lab_setting_adds_prefixes_and_pipeline_always_resolves(monkeypatch):
    from tests import toy_fns

    monkeypatch.delenv("SYSID_ALLOWED_FN_PREFIXES")
    with pytest.raises(builder.FunctionNotAllowed, match="SYSID_ALLOWED_FN_PREFIXES"):
        builder.resolve_fn("tests.toy_fns.toy_model")
    # a prefix allows its modules, not a module whose name merely starts with the same letters
    monkeypatch.setenv("SYSID_ALLOWED_FN_PREFIXES", "test, mylab.models")
    with pytest.raises(builder.FunctionNotAllowed):
        builder.resolve_fn("tests.toy_fns.toy_model")
    monkeypatch.setenv("SYSID_ALLOWED_FN_PREFIXES", "mylab.models,tests.")
    assert builder.resolve_fn("tests.toy_fns.toy_model") is toy_fns.toy_model
    from pipeline.models.builders import stacked_core_full_gauss_readout

    monkeypatch.delenv("SYSID_ALLOWED_FN_PREFIXES")
    assert (
        builder.resolve_fn("pipeline.models.stacked_core_full_gauss_readout")
        is stacked_core_full_gauss_readout
    )
    assert (
        builder.resolve_fn("sensorium.models.stacked_core_full_gauss_readout")
        is stacked_core_full_gauss_readout
    )
    # an explicit list (what the schemas side passes) overrides the environment
    with pytest.raises(builder.FunctionNotAllowed):
        builder.resolve_fn("pipeline.models.stacked_core_full_gauss_readout", allowed_prefixes=["tests"])


def test_a_malformed_prefix_setting_is_a_clear_error(monkeypatch):
    from schemas.settings import SettingsError, current_settings

    monkeypatch.setenv("SYSID_ALLOWED_FN_PREFIXES", "mylab.*")
    with pytest.raises(SettingsError, match="SYSID_ALLOWED_FN_PREFIXES.*mylab"):
        current_settings()
    monkeypatch.setenv("SYSID_ALLOWED_FN_PREFIXES", "mylab")
    assert current_settings().allowed_fn_prefixes == ("pipeline", "mylab")


def _plan(**sections):
    doc = {
        "seeds": [1],
        "dataset": {"fn": "tests.toy_fns.toy_dataset", "config": {}},
        "model": {"fn": "tests.toy_fns.toy_model", "config": {}},
        "trainer": {"fn": "tests.toy_fns.toy_trainer", "config": {"epochs": 1}},
    }
    doc.update(sections)
    return parse_plan(doc)


def test_dry_run_refuses_os_system(tmp_path):
    plan = _plan(dataset={"fn": "os.system", "config": {"command": f"touch {tmp_path}/pwned.txt"}})
    with pytest.raises(RegistrationError, match="dataset.*os.system.*not allowed"):
        validate_plan(plan)
    assert not (tmp_path / "pwned.txt").exists()


def test_register_and_worker_refuse_functions_outside_the_prefixes(empty_db, tmp_path):
    import schemas

    target = tmp_path / "pwned.txt"
    with pytest.raises(ValueError, match="not allowed"):
        schemas.Dataset.add_entry("os.system", {"command": f"touch {target}"})
    assert len(schemas.Dataset()) == 0
    # a row written past add_entry (anyone with write access to the table): the worker refuses it
    schemas.Fabrikant.ensure()
    key = {"dataset_fn": "os.system", "dataset_hash": "0" * 32}
    schemas.Dataset().insert1(
        {
            **key,
            "dataset_config": {"command": f"touch {target}"},
            "dataset_fabrikant": schemas.Fabrikant().to_dicts()[0]["fabrikant_name"],
        }
    )
    schemas.DataInfo.populate(reserve_jobs=True, suppress_errors=True)
    assert not target.exists()
    messages = " ".join(schemas.errors("DataInfo")["error_message"].astype(str))
    assert "not allowed" in messages and len(schemas.DataInfo()) == 0


# ------------------------------------------------------------------------- results filter


@pytest.fixture
def table():
    return pd.DataFrame(
        {
            "score": [0.2, float("nan"), 0.4, 0.6],
            "seed": [1, 2, 1, 3],
            "model.layers": [2, 3, 3, None],
            "model_fn": ["pipeline.a", "pipeline.a", "pipeline.b", "pipeline.b"],
            "degenerate": [False, False, True, False],
        }
    )


@pytest.mark.parametrize(
    ("expr", "rows"),
    [
        ("score > 0.3", [2, 3]),
        ("score > 0.3 and seed == 1", [2]),
        ("seed == 2 or not score < 0.5", [1, 3]),
        ("`model.layers` == 3", [1, 2]),
        ("model.layers >= 3", [1, 2]),
        ("seed in [1, 3] and model_fn != 'pipeline.a'", [2, 3]),
        ("seed not in (1,)", [1, 3]),
        ("0.1 < score <= 0.4", [0, 2]),
        ("(score > 0.5) | (seed == 2)", [1, 3]),
        ("`model.layers` == None", [3]),
        ("degenerate", [2]),
        ("not degenerate and seed > -1", [0, 1, 3]),
    ],
)
def test_filters_select_the_rows_pandas_query_selects(table, expr, rows):
    from sysid.safe_filter import filter_rows

    assert list(filter_rows(table, expr).index) == rows


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("@pd.io.common.os.system('touch pwned.txt') == 0", "'@'"),
        ("__import__('os').system('touch pwned.txt') == 0", "calls are not allowed"),
        ("score.__class__ == 1", "attribute access"),
        ("nope > 1", "unknown column 'nope'"),
        ("score + 1 > 2", "not allowed"),
        ("score[0] > 1", "not allowed"),
        ("seed in seed", "literal list"),
        ("1 < 2", "two literals"),
        ("score", "not a true/false column"),
        ("score >", "not a valid expression"),
        ("model_fn < 3", "cannot evaluate"),
        ("[x for x in ()] == 1", "not allowed"),
    ],
)
def test_filters_outside_the_grammar_are_refused(table, tmp_path, monkeypatch, expr, message):
    from sysid.results import select_rows

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        select_rows(table, filter_expr=expr)
    assert not (tmp_path / "pwned.txt").exists()


# ------------------------------------------------------------------------- column limits, atomic register


def test_dry_run_names_every_value_its_column_cannot_hold():
    plan = _plan(
        seeds=[1, 2**40],
        experiment={"name": "x" * 65, "comment": "c" * 513},
        fabrikant={"name": "f" * 33, "email": "e" * 129, "affiliation": "ok"},
        model={"fn": "tests.toy_fns.toy_model", "config": {}, "comment": "m" * 257},
        trainer={"fn": "tests.toy_fns.toy_trainer", "config": {"epochs": 1}, "comment": "nul\x00"},
    )
    with pytest.raises(RegistrationError) as info:
        validate_plan(plan)
    problems = info.value.problems
    expected = [
        ("seeds: seed 1099511627776 is outside the range of Seed.seed (int32)", "seed"),
        ("experiment: experiment_name", "Experiments.experiment_name (varchar(64)) holds at most 64"),
        ("experiment: experiment_comment", "holds at most 512"),
        ("fabrikant: fabrikant_name", "Fabrikant.fabrikant_name (varchar(32)) holds at most 32"),
        ("fabrikant: email", "holds at most 128"),
        ("model[0]: model_comment", "holds at most 256"),
        ("trainer[0]: trainer_comment", "NUL character"),
    ]
    for start, detail in expected:
        assert any(p.startswith(start) and detail in p for p in problems), (start, problems)
    assert len(problems) == len(expected)


def test_limits_are_read_from_the_table_definitions():
    from schemas.configs import Experiments, Fabrikant, Model, Seed
    from schemas.limits import column_limits

    assert column_limits(Fabrikant)["email"].max_length == 128
    assert column_limits(Model)["model_fn"].max_length == 128
    assert column_limits(Model)["model_comment"].max_length == 256
    assert column_limits(Experiments)["experiment_name"].max_length == 64
    assert (column_limits(Seed)["seed"].low, column_limits(Seed)["seed"].high) == (-(2**31), 2**31 - 1)


def _count_rows(schemas) -> dict[str, int]:
    tables = ("Fabrikant", "Dataset", "Model", "Trainer", "Seed", "Experiments")
    return {name: len(getattr(schemas, name)()) for name in tables}


@pytest.mark.parametrize(
    "overrides",
    [
        {"seeds": [1, 2**40]},  # refused by the database itself (int32)
        {"experiment": {"name": "x" * 65}},  # refused by Experiments.add_entry, after the configs
    ],
)
def test_a_failing_register_leaves_no_rows(empty_db, overrides):
    import schemas
    from sysid.register import register_plan

    plan = _plan(fabrikant={"name": "carol", "email": "c@lab"}, **overrides)
    # register_plan without validate_plan: what reaches the database when validation misses something
    with pytest.raises(RegistrationError, match="nothing was written") as info:
        register_plan(plan, schemas)
    assert "seeds" in str(info.value) or "experiment" in str(info.value)
    assert _count_rows(schemas) == dict.fromkeys(_count_rows(schemas), 0)
    # the same file without the bad value registers
    plan = _plan(fabrikant={"name": "carol", "email": "c@lab"}, experiment={"name": "fine"})
    keys = register_plan(plan, schemas)
    assert len(keys["dataset"]) == 1
    assert _count_rows(schemas) == {
        "Fabrikant": 1, "Dataset": 1, "Model": 1, "Trainer": 1, "Seed": 1, "Experiments": 1
    }  # fmt: skip


def test_add_entry_names_the_column_a_value_does_not_fit(empty_db):
    import schemas

    with pytest.raises(ValueError, match="model_comment .* holds at most 256"):
        schemas.Model.add_entry("tests.toy_fns.toy_model", {}, model_comment="m" * 257)
    with pytest.raises(ValueError, match="seed 4294967296 is outside the range"):
        schemas.Experiments.add_entry("e", [], [], [], [2**32])
    assert _count_rows(schemas) == dict.fromkeys(_count_rows(schemas), 0)


# ------------------------------------------------------------------------- typed validation


GAUSS = "pipeline.models.stacked_core_full_gauss_readout"
TRAINER = "pipeline.training.standard_trainer"
LOADERS = "pipeline.data.static_loaders"


@pytest.mark.parametrize(
    ("fn", "config", "role", "message"),
    [
        (
            GAUSS,
            {"layers": "4"},
            "model",
            r"layers = '4' \(str\): Input should be a valid integer \(expected int >= 1\)",
        ),
        (
            GAUSS,
            {"hidden_channels": -1},
            "model",
            r"hidden_channels = -1 \(int\).*greater than or equal to 1",
        ),
        (GAUSS, {"input_kern": 0}, "model", "input_kern = 0"),
        (GAUSS, {"gamma_readout": -0.1}, "model", "gamma_readout = -0.1"),
        (
            GAUSS,
            {"depth_separable": 1},
            "model",
            r"depth_separable = 1 \(int\): Input should be a valid boolean",
        ),
        (GAUSS, {"stack": "last"}, "model", r"stack = 'last'.*expected int \| Sequence\[int\] \| None"),
        (TRAINER, {"max_iter": 0}, "trainer", "max_iter = 0"),
        (TRAINER, {"lr_init": 0}, "trainer", r"lr_init = 0 \(int\).*greater than 0"),
        (TRAINER, {"lr_init": "1e-3"}, "trainer", r"lr_init = '1e-3' \(str\)"),  # YAML 1.1 reads 1e-3 as text
        (TRAINER, {"lr_init": 1e300}, "trainer", r"lr_init = 1e\+300 \(float\): Input should be less than"),
        (LOADERS, {"paths": ["a"], "batch_size": 0}, "dataset", "batch_size = 0"),
        (LOADERS, {"paths": ["a"], "batch_size": 8.0}, "dataset", r"batch_size = 8.0 \(float\)"),
        ("tests.toy_fns.toy_dataset", {"n_trials": "8"}, "dataset", "n_trials = '8'"),
    ],
)
def test_values_are_checked_against_the_builders_annotations(fn, config, role, message):
    with pytest.raises(ValueError, match=message):
        builder.validate_config(fn, config, role)


@pytest.mark.parametrize(
    ("fn", "config"),
    [
        (GAUSS, {"layers": 4, "hidden_channels": 8, "gamma_readout": 1, "stack": [-1], "shifter": None}),
        (GAUSS, {"grid_mean_predictor": {"type": "cortex", "input_dimensions": 2}, "stack": -1}),
        (TRAINER, {"max_iter": 3, "lr_init": 0.01, "device": "cpu", "lr_decay_factor": 0.3}),
        (LOADERS, {"paths": "a", "batch_size": 8, "scale": 0.25, "areas": ["V1"], "exclude": "behavior"}),
    ],
    ids=["gauss", "predictor", "trainer", "loaders"],
)
def test_valid_configs_pass_the_typed_check(fn, config):
    role = {GAUSS: "model", TRAINER: "trainer", LOADERS: "dataset"}[fn]
    builder.validate_config(fn, config, role)


def test_dry_run_uses_the_typed_check():
    plan = _plan(
        model={"fn": GAUSS, "config": {"grid": {"layers": [2, "4"]}}},
        trainer={"fn": TRAINER, "config": {"max_iter": 0}},
    )
    with pytest.raises(RegistrationError) as info:
        validate_plan(plan)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("model[0] layers=4: ValueError") and "layers = '4' (str)" in problems[0]
    assert problems[1].startswith("trainer[0]: ValueError") and "max_iter = 0" in problems[1]


def test_add_entry_refuses_mistyped_values(empty_db):
    import schemas

    with pytest.raises(ValueError, match="layers = '4'"):
        schemas.Model.add_entry(GAUSS, {"layers": "4"})
    assert len(schemas.Model()) == 0


# ------------------------------------------------------------------------- hostile files and values


def _alias_bomb(levels: int = 8) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return (
        "\n".join(lines)
        + f"\nseeds: [1]\ndataset: {{fn: pipeline.data.static_loaders, config: {{paths: *a{levels}}}}}\n"
    )


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    import time

    from sysid.register import load_file

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())  # ~10^9 values once the aliases are expanded, under 1 kB of text
    assert path.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(RegistrationError, match="expands to more than 200000 values"):
        load_file(path)
    assert time.perf_counter() - started < 5
    # aliases in moderation still work
    path.write_text("base: &b {batch_size: 8}\nseeds: [1]\ndataset: {fn: x.y, config: *b}\n")
    assert load_file(path)["dataset"]["config"] == {"batch_size": 8}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deep_nesting_in_a_file_is_a_clear_error(tmp_path, suffix):
    from sysid.register import load_file

    path = tmp_path / f"deep{suffix}"
    path.write_text('{"seeds": [1], "model": {"fn": "a.b", "config": {"x": ' + "[" * 500 + "]" * 500 + "}}}")
    with pytest.raises(RegistrationError, match="nesting deeper than 64 levels"):
        load_file(path)


def test_oversized_files_are_refused(tmp_path):
    from sysid.register import MAX_FILE_BYTES, load_file

    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_FILE_BYTES + "\nseeds: [1]\n")
    with pytest.raises(RegistrationError, match="at most"):
        load_file(path)


def test_deep_configs_and_nul_characters_are_clear_errors():
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ValueError, match="nests deeper than 64 levels"):
        builder.canonical_config(deep)
    with pytest.raises(ValueError, match=r"config entry paths\[0\] contains a NUL character"):
        builder.canonical_config({"paths": ["a\x00b"]})
    with pytest.raises(ValueError, match="NUL character"):
        builder.canonical_config({"a\x00": 1})
    plan = _plan(dataset={"fn": "tests.toy_fns.toy_labelled_dataset", "config": {"label": "x\x00"}})
    with pytest.raises(RegistrationError, match=r"dataset\[0\].*label contains a NUL character"):
        validate_plan(plan)


def test_nul_characters_never_reach_the_database(empty_db):
    import schemas

    with pytest.raises(ValueError, match="NUL character"):
        schemas.Dataset.add_entry("tests.toy_fns.toy_labelled_dataset", {"label": "x\x00"})
    with pytest.raises(ValueError, match="NUL character"):
        schemas.Dataset.add_entry("tests.toy_fns.toy_labelled_dataset", {}, dataset_comment="x\x00")
    assert len(schemas.Dataset()) == 0


def test_errors_of_tables_without_model_keys_show_empty_cells_not_nan():
    from sysid.render import compact_keys, format_value

    failed = pd.DataFrame(
        {
            "table": ["DataInfo", "TrainedModel"],
            "dataset_fn": ["pipeline.data.static_loaders"] * 2,
            "dataset_hash": ["a" * 32, "b" * 32],
            "model_fn": [float("nan"), "pipeline.models.stacked_core_full_gauss_readout"],
            "model_hash": [float("nan"), "c" * 32],
            "error_message": ["boom", "bang"],
        }
    )
    shown = compact_keys(failed)
    assert list(shown["dataset"]) == ["static_loaders:aaaaaaaa", "static_loaders:bbbbbbbb"]
    assert pd.isna(shown["model"][0]) and format_value(shown["model"][0]) == ""
    assert shown["model"][1] == "stacked_core_full_gauss_readout:cccccccc"
    assert "nan" not in " ".join(format_value(v) for v in shown.iloc[0])


# ------------------------------------------------------------------------- dataset cache key


@pytest.mark.parametrize("edit", ["data/responses/0.npy", "data/images/5.npy", "meta/neurons/unit_ids.npy"])
def test_the_dataset_cache_sees_same_size_edits_with_restored_mtimes(tmp_path, edit):
    import numpy as np

    from pipeline.data.datasets import StaticDataset
    from pipeline.data.synthetic import make_synthetic_dataset

    path = make_synthetic_dataset(
        tmp_path / "static90009-1-1-synthetic", n_neurons=5, n_train=8, n_validation=4, n_test_images=2,
        n_repeats=2, image_shape=(12, 16), filter_size=5,
    )  # fmt: skip
    cache_dir = tmp_path / "cache"
    first = StaticDataset(path, cache_dir=cache_dir)
    assert StaticDataset(path, cache_dir=cache_dir).from_cache
    target = path / edit
    stat = target.stat()
    values = np.load(target)
    values.reshape(-1)[0] = values.reshape(-1)[0] + 7
    np.save(target, values)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and time stamp as before
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    edited = StaticDataset(path, cache_dir=cache_dir)
    assert not edited.from_cache and edited.fingerprint != first.fingerprint


# ------------------------------------------------------------------------- degenerate models


def zeroing_trainer(model, dataloaders, seed, uid=None, cb=None, resume_state=None, zero: bool = True):
    """A 'trainer' that sets every parameter to 0 (constant predictions, as lr_init: 1e6 leaves them), or none."""
    import torch

    if zero:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
    return 0.0, {}, model.state_dict()


TINY_MODEL = {"hidden_channels": 4, "layers": 1, "input_kern": 5, "hidden_kern": 3}


def test_constant_predictions_tells_degenerate_models(synthetic_loaders):
    from pipeline.models import stacked_core_full_gauss_readout
    from pipeline.scoring import constant_predictions

    model = stacked_core_full_gauss_readout(synthetic_loaders, seed=0, **TINY_MODEL)
    assert constant_predictions(model, synthetic_loaders) is False
    zeroing_trainer(model, synthetic_loaders, 0)
    assert constant_predictions(model, synthetic_loaders) is True
    assert constant_predictions(model, {"train": synthetic_loaders["train"]}) is None  # no validation tier


def test_workers_flag_degenerate_models_and_status_shows_them(empty_db, synthetic_dataset_path):
    import schemas
    from sysid.render import status_group

    dataset = schemas.Dataset.add_entry(LOADERS, {"paths": [str(synthetic_dataset_path)], "batch_size": 64})
    model = schemas.Model.add_entry(GAUSS, TINY_MODEL)
    trainers = [schemas.Trainer.add_entry(f"{__name__}.zeroing_trainer", {"zero": z}) for z in (True, False)]
    schemas.Seed.insert1({"seed": 1}, skip_duplicates=True)
    schemas.TrainedModel.populate(reserve_jobs=True)
    rows = {r["trainer_hash"]: r for r in schemas.TrainedModel().to_dicts()}
    assert len(rows) == 2
    degenerate, fine = rows[trainers[0]["trainer_hash"]], rows[trainers[1]["trainer_hash"]]
    assert degenerate["comment"].startswith("degenerate: constant predictions") and fine["comment"] == ""
    assert degenerate["output"]["degenerate"] is True
    flagged = schemas.degenerate_models()
    assert len(flagged) == 1 and flagged["trainer_hash"][0] == trainers[0]["trainer_hash"]
    assert (
        flagged["table"][0] == "TrainedModel"
        and {**dataset, **model}.items() <= flagged.iloc[0].to_dict().items()
    )
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status_group(schemas.job_status(), schemas.running_jobs(), degenerate=flagged))
    assert "1 trained model(s) degenerate" in console.export_text()


# ------------------------------------------------------------------------- clearer messages


def test_random_bytes_are_not_a_npy_file_and_no_pickle_is_suggested():
    from pipeline.data.files import read_npy_bytes

    with pytest.raises(ValueError, match=r"meta/trials/tiers.npy: it is not a .npy file") as info:
        read_npy_bytes(os.urandom(200), "meta/trials/tiers.npy")
    assert "allow_pickle" not in str(info.value)


def test_loaders_without_a_train_tier_say_so(synthetic_loaders):
    from pipeline.contracts import train_loaders

    with pytest.raises(ValueError, match="the dataset has no train trials .*test, validation"):
        train_loaders({tier: synthetic_loaders[tier] for tier in ("validation", "test")})


def test_cli_dry_run_lists_every_problem_and_runs_nothing(tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from sysid.cli import cli

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pwn.yaml"
    doc = {
        "seeds": [2**40],
        "dataset": {"fn": "os.system", "config": {"command": "touch pwned.txt"}},
        "model": {"fn": GAUSS, "config": {"layers": "4"}},
        "trainer": {"fn": TRAINER, "config": {"max_iter": 0}},
        "experiment": {"name": "x" * 65},
    }
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["register", str(path), "--dry-run"])
    assert result.exit_code != 0
    for expected in (
        "5 problem(s)",
        "os.system",
        "not allowed",
        "layers = '4'",
        "max_iter = 0",
        "seed",
        "experiment_name",
    ):
        assert expected in result.output, (expected, result.output)
    assert not (tmp_path / "pwned.txt").exists()
