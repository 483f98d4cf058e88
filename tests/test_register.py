"""Registration files: parsing, grid expansion and validation (no database needed)."""

import json

import pytest

from sysid.register import (
    RegistrationError,
    expand_grid,
    load_file,
    parse_plan,
    validate_plan,
)

# small functions for validation: registration resolves these dotted paths like any user function


def toy_dataset(paths, batch_size=8, seed=None):
    return {}


def toy_model(dataloaders=None, seed=None, layers=1, hidden=4, predictor=None):
    return None


def toy_trainer(model, dataloaders, seed, uid=None, cb=None, max_iter=1):
    return 0.0, {}, {}


HERE = "tests.test_register"


def _doc(**overrides):
    doc = {
        "seeds": [1, 2],
        "dataset": {"fn": f"{HERE}.toy_dataset", "config": {"paths": ["a", "b"], "batch_size": 4}},
        "model": {"fn": f"{HERE}.toy_model", "config": {"hidden": 4, "grid": {"layers": [1, 2, 3]}}},
        "trainer": {"fn": f"{HERE}.toy_trainer", "config": {"max_iter": 2}},
    }
    doc.update(overrides)
    return doc


def test_grid_expands_to_every_combination_in_order():
    combos = expand_grid({"a": 1, "grid": {"b": [1, 2], "c": ["x", "y", "z"]}})
    assert len(combos) == 6
    assert [c for c, _ in combos][:3] == [
        {"a": 1, "b": 1, "c": "x"},
        {"a": 1, "b": 1, "c": "y"},
        {"a": 1, "b": 1, "c": "z"},
    ]
    assert combos[-1][1] == {"b": 2, "c": "z"}


def test_grid_dotted_keys_reach_nested_dicts_without_sharing_state():
    config = {"predictor": {"type": "cortex"}, "grid": {"predictor.hidden": [10, 30]}}
    combos = [c for c, _ in expand_grid(config)]
    assert combos == [
        {"predictor": {"type": "cortex", "hidden": 10}},
        {"predictor": {"type": "cortex", "hidden": 30}},
    ]
    assert config["predictor"] == {"type": "cortex"}  # the input is not modified


def test_lists_outside_the_grid_are_plain_values():
    assert expand_grid({"paths": ["a", "b"]}) == [({"paths": ["a", "b"]}, {})]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"grid": {"a": 3}}, "non-empty list"),
        ({"grid": {"a": []}}, "non-empty list"),
        ({"grid": [1, 2]}, "non-empty mapping"),
        ({"a": 1, "grid": {"a": [1, 2]}}, "also set outside the grid"),
        ({"a": 1, "grid": {"a.b": [1, 2]}}, "not a mapping"),
    ],
)
def test_bad_grids_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        expand_grid(config)


def test_plan_counts_and_labels():
    plan = parse_plan(_doc())
    assert [len(plan.entries[s]) for s in ("dataset", "model", "trainer")] == [1, 3, 1]
    assert plan.seeds == [1, 2]
    assert plan.n_combinations == 6
    models = plan.entries["model"]
    assert [m.config["layers"] for m in models] == [1, 2, 3]
    assert models[1].label == "model[0] layers=2"
    assert models[1].summary() == "layers=2"
    assert len({m.hash for m in models}) == 3


def test_sections_accept_lists_and_duplicates_collapse():
    model = {"fn": f"{HERE}.toy_model", "config": {"layers": 1}}
    plan = parse_plan(_doc(model=[model, dict(model), {"fn": f"{HERE}.toy_model", "config": {"layers": 2}}]))
    assert [m.config for m in plan.entries["model"]] == [{"layers": 1}, {"layers": 2}]


def test_seed_and_experiment_forms():
    plan = parse_plan(_doc(seeds=7, experiment="demo", fabrikant={"name": "alice", "email": "a@b.c"}))
    assert plan.seeds == [7]
    assert plan.experiment == {"name": "demo"}
    assert plan.fabrikant == {"name": "alice", "email": "a@b.c"}


def test_structure_problems_are_all_reported_together():
    doc = _doc(seeds=[1, -1, "2", True], extra=1)
    del doc["trainer"]
    doc["model"] = {"fn": "nodots", "config": {}}
    with pytest.raises(RegistrationError) as info:
        parse_plan(doc, source="bad.yaml")
    text = str(info.value)
    assert text.startswith("bad.yaml")
    for needle in ("'extra'", "missing section 'trainer'", "'nodots'", "-1", "'2'", "True"):
        assert needle in text, needle


def test_validation_checks_every_entry_before_anything_else():
    doc = _doc(
        model={"fn": f"{HERE}.toy_model", "config": {"grid": {"layers": [1, 2], "widht": [3]}}},
        trainer={"fn": f"{HERE}.no_such_trainer", "config": {}},
    )
    plan = parse_plan(doc)
    with pytest.raises(RegistrationError) as info:
        validate_plan(plan)
    problems = info.value.problems
    # both grid points of the misspelled model key and the unknown trainer are reported
    assert len(problems) == 3
    assert sum("widht" in p for p in problems) == 2
    assert any("no_such_trainer" in p for p in problems)


def test_validation_rejects_framework_arguments_and_missing_required_keys():
    datasets = [
        {"fn": f"{HERE}.toy_dataset", "config": {"paths": ["a"], "seed": 3}},
        {"fn": f"{HERE}.toy_dataset", "config": {"batch_size": 3}},
    ]
    with pytest.raises(RegistrationError) as info:
        validate_plan(parse_plan(_doc(dataset=datasets)))
    first, second = info.value.problems
    assert first.startswith("dataset[0]") and "seed" in first
    assert second.startswith("dataset[1]") and "paths" in second


def test_valid_plan_passes_after_checking_every_entry():
    from pipeline.builder import validate_config

    plan = parse_plan(_doc())
    checked = []

    def recording(fn, config, role):
        checked.append((role, fn, config))
        return validate_config(fn, config, role)  # the default validator, so a bad entry would raise

    assert validate_plan(plan, validator=recording) is None
    assert checked == [(e.section, e.fn, e.config) for e in plan.all_entries()]
    assert [role for role, _, _ in checked] == ["dataset", "model", "model", "model", "trainer"]
    validate_plan(plan)  # and the default validator accepts the same plan


def test_load_yaml_and_json(tmp_path):
    import yaml

    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(_doc()))
    (tmp_path / "grid.json").write_text(json.dumps(_doc()))
    assert load_file(tmp_path / "grid.yaml") == load_file(tmp_path / "grid.json") == _doc()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RegistrationError, match="mapping"):
        load_file(tmp_path / "list.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(RegistrationError, match="cannot parse"):
        load_file(tmp_path / "broken.json")


def test_example_grid_file_parses():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "demo_grid.yaml"
    plan = parse_plan(load_file(path), source=str(path))
    assert plan.n_combinations == 4
    assert plan.experiment == {
        "name": "demo",
        "comment": "two core depths on a synthetic dataset, two seeds each",
    }
    validate_plan(plan, source=str(path))  # the real pipeline functions accept every config
