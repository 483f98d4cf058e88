"""MEI methods in registration files, the MEI grid of the report, and the ensemble CLI's restriction
(no database: the database flow is in tests/test_cli.py and tests/test_schemas_meis.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.builder import config_hash
from pipeline.mei import MEIConfig
from sysid.register import MEI_SECTION, RegistrationError, parse_plan, validate_plan
from sysid.report import plot_mei_grid, write_report

MEI_ENTRY = {"fn": "pipeline.mei.optimize_meis", "config": {"norm": 5.0, "grid": {"jitter": [0, 2]}}}


def test_a_file_of_mei_methods_only_registers_methods_and_seeds() -> None:
    plan = parse_plan({MEI_SECTION: MEI_ENTRY, "mei_seeds": [0, 3, 0]})
    entries = plan.entries[MEI_SECTION]
    assert [e.config for e in entries] == [{"norm": 5.0, "jitter": 0}, {"norm": 5.0, "jitter": 2}]
    assert plan.mei_seeds == [0, 3] and plan.n_combinations == 0 and plan.seeds == []
    assert plan.all_entries() == entries
    validate_plan(plan)
    # the hash shown is the one MEIMethod keys the entry by: of the complete settings
    assert entries[0].hash == config_hash(MEIConfig(norm=5.0, jitter=0).model_dump(mode="json"))


def test_mei_sections_beside_a_training_plan_and_their_errors() -> None:
    training = {
        "seeds": [1],
        "dataset": {"fn": "pipeline.data.static_loaders", "config": {"paths": ["/x"], "batch_size": 8}},
        "model": {"fn": "pipeline.models.stacked_core_full_gauss_readout", "config": {}},
        "trainer": {"fn": "pipeline.training.standard_trainer", "config": {}},
    }
    plan = parse_plan({**training, MEI_SECTION: MEI_ENTRY})
    assert plan.n_combinations == 1 and [e.section for e in plan.all_entries()][-2:] == [MEI_SECTION] * 2
    bad = parse_plan({MEI_SECTION: [{"fn": "pipeline.mei.optimize_meis", "config": {"nrom": 5.0}}]})
    with pytest.raises(RegistrationError, match="nrom"):
        validate_plan(bad)
    not_a_method = parse_plan({MEI_SECTION: {"fn": "pipeline.training.standard_trainer", "config": {}}})
    with pytest.raises(RegistrationError, match="not an MEI method"):
        validate_plan(not_a_method)
    with pytest.raises(RegistrationError, match="mei_seeds: each seed"):
        parse_plan({"mei_seeds": [-1]})
    # a training section without the others is still an incomplete training plan
    with pytest.raises(RegistrationError, match="missing section 'model'"):
        parse_plan({"seeds": [1], "dataset": training["dataset"], MEI_SECTION: MEI_ENTRY})


def _meis(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "unit_id": np.arange(1, n + 1),
            "image": [rng.standard_normal((1, 6, 10)).astype(np.float32) for _ in range(n)],
            "correlation": rng.uniform(0, 1, n),
            "activation": rng.uniform(1, 5, n),
            "relative_activation": rng.uniform(2, 8, n),
        }
    )


def test_the_mei_grid_shows_the_best_predicted_neurons_first(tmp_path) -> None:
    meis = _meis(20)
    fig = plot_mei_grid(meis, n=6, columns=3, title="t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    best = meis.sort_values("correlation", ascending=False).head(6)
    assert len(titles) == 6
    assert [int(t.split()[1]) for t in titles] == best["unit_id"].tolist()
    assert f"r={best['correlation'].iloc[0]:.2f}" in titles[0] and "x mean" in titles[0]
    # one grey scale for all panels, symmetric about 0
    limits = {tuple(np.round(ax.images[0].get_clim(), 6)) for ax in fig.axes if ax.images}
    assert len(limits) == 1 and next(iter(limits))[0] == -next(iter(limits))[1]
    written = write_report(tmp_path, meis=meis, meis_title="MEIs")
    assert [p.name for p in written] == ["meis.png"] and written[0].stat().st_size > 5000
    with pytest.raises(ValueError, match="image"):
        plot_mei_grid(meis.drop(columns=["image"]))


def test_an_ensemble_is_never_every_trained_model_by_default() -> None:
    from sysid.ensembles import member_restriction

    # checked before the database is touched (a prefix that is not hexadecimal: tests/test_cli.py)
    with pytest.raises(ValueError, match="name the members"):
        member_restriction(None)
