"""Differential tests: ``static_loaders`` against sensorium's own ``static_loaders`` on the same files.

Three synthetic sessions with behaviour and pupil centre, named by sensorium's three data-key rules
(metadata, ``preproc``, ``-GrayImageNet``), are read by both (the peer from a copy: it writes
config.json). For every option combination the two must agree on: the tiers, the data keys, the
batch fields, every value of every trial (images with their behaviour / eye-position channels,
responses, behaviour, pupil centre) in the same order and batches for the non-train tiers and for
the same set of trials in train, the selected neurons (by unit id, in order), and the session's trial
count that the trainer's loss scale uses. Skipped when sensorium (shared/peers) is not available.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import make_synthetic_dataset, static_loaders
from tests.sensorium_peer import import_sensorium, peer_copy, peer_shadow, require_skimage

# name -> (session stored in the metadata, areas, layers); the key sensorium derives is in KEYS
SESSIONS = {
    "static90101-1-1-synthetic": "90101-1-1",  # no pattern in the name: the metadata gives the key
    "static90102-2-2-preproc0": "5-6-7",  # "preproc": the name gives 90102-2-2-0, whatever the metadata
    "static90103-3-3-GrayImageNet-94c6ff995dac583098847cfecd43e7b6": "8-9-10",
}
KEYS = ["90101-1-1", "90102-2-2-0", "90103-3-3"]
SIZES = dict(n_train=30, n_validation=9, n_test_images=3, n_repeats=3, image_shape=(10, 14))
NEURONS = (11, 9, 13)
BASE = dict(batch_size=8, seed=5, cuda=False)
ATOL = 1e-5


@pytest.fixture(scope="module")
def sensorium():
    return import_sensorium()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("peer-loaders")
    return [
        make_synthetic_dataset(
            root / name,
            n_neurons=n,
            seed=10 + i,
            session=session,
            areas=("V1", "LM"),
            layers=("L2/3", "L2/3", "L4"),
            **SIZES,
        )
        for i, ((name, session), n) in enumerate(zip(SESSIONS.items(), NEURONS))
    ]


@pytest.fixture(scope="module")
def peer_paths(datasets, tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("peer-copies")
    return [peer_copy(path, root) for path in datasets]


def _peer_neuron_ids(loader) -> np.ndarray:
    """Unit ids of the neurons the peer's loader hands out (its dataset applies the Subsample transform)."""
    return np.asarray(loader.dataset.neurons.unit_ids)


def _stack(items) -> dict[str, torch.Tensor]:
    fields = items[0]._fields
    return {f: torch.stack([getattr(item, f) for item in items]) for f in fields}


def _assert_close(ours: torch.Tensor, peer: torch.Tensor, what: str) -> None:
    assert tuple(ours.shape) == tuple(peer.shape), f"{what}: shape {tuple(ours.shape)} vs {tuple(peer.shape)}"
    torch.testing.assert_close(ours, peer.to(ours.dtype), atol=ATOL, rtol=ATOL, msg=what)


def compare(ours: dict, peer: dict) -> None:
    """Assert that our ``{tier: {key: loader}}`` equals the peer's (see the module docstring)."""
    peer_tiers = [t for t in peer if any(len(loader.sampler) for loader in peer[t].values())]
    assert list(ours) == peer_tiers, "tiers (the peer also lists empty tiers; those are left out)"
    for tier in ours:
        assert list(ours[tier]) == list(peer[tier]), f"{tier}: data keys"
        for key, mine in ours[tier].items():
            theirs = peer[tier][key]
            where = f"{tier}/{key}"
            np.testing.assert_array_equal(mine.dataset.neurons.unit_ids, _peer_neuron_ids(theirs), where)
            assert mine.dataset.session_trials == len(theirs.dataset), f"{where}: trials of the session"
            first_mine, first_theirs = next(iter(mine)), next(iter(theirs))
            assert first_mine._fields == first_theirs._fields, f"{where}: batch fields"
            if tier == "train":  # shuffled differently: the same trials, compared trial by trial
                assert sorted(mine.dataset.trial_indices) == sorted(theirs.sampler.indices), (
                    f"{where}: trials"
                )
                everything = mine.dataset.batch(slice(0, len(mine.dataset)))._asdict()
                reference = _stack([theirs.dataset[int(i)] for i in mine.dataset.trial_indices])
                for field in everything:
                    _assert_close(everything[field], reference[field], f"{where}: {field}")
            else:  # the same batches in the same order
                assert len(mine) == len(theirs), f"{where}: number of batches"
                for number, (a, b) in enumerate(zip(mine, theirs)):
                    for field in a._fields:
                        _assert_close(
                            getattr(a, field), getattr(b, field), f"{where} batch {number}: {field}"
                        )


def run_both(sensorium, datasets, peer_paths, **options) -> tuple[dict, dict]:
    config = {**BASE, **options}
    ours = static_loaders([str(p) for p in datasets], **config)
    peer = sensorium.datasets.static_loaders(list(peer_paths), **config)
    return ours, peer


BEHAVIOUR = [{}, {"include_behavior": True}, {"include_behavior": True, "add_behavior_as_channels": False}]
EYE = [
    {},
    {"include_eye_position": True},
    {"include_eye_position": True, "add_eye_pos_as_channels": None},
    {"include_eye_position": True, "add_eye_pos_as_channels": False},
    {"include_eye_position": True, "add_eye_pos_as_channels": True},
]
CHANNEL_GRID = [
    {"normalize": normalize, **behaviour, **eye}
    for normalize, behaviour, eye in itertools.product([True, False], BEHAVIOUR, EYE)
]


def _grid_id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items()) or "defaults"


@pytest.mark.parametrize("options", CHANNEL_GRID, ids=_grid_id)
def test_fields_channels_and_values(sensorium, datasets, peer_paths, options):
    ours, peer = run_both(sensorium, datasets, peer_paths, **options)
    compare(ours, peer)
    channels = 1 + 3 * bool(options.get("include_behavior") and options.get("add_behavior_as_channels", True))
    channels += 2 * bool(options.get("add_eye_pos_as_channels"))
    assert next(iter(ours["validation"][KEYS[0]])).images.shape[1] == channels


@pytest.mark.parametrize("scale", [1, 0.5, 0.3], ids=str)
def test_scale(sensorium, datasets, peer_paths, scale):
    require_skimage()
    full = {"include_behavior": True, "include_eye_position": True, "add_eye_pos_as_channels": True}
    ours, peer = run_both(sensorium, datasets, peer_paths, scale=scale, **full)
    compare(ours, peer)


def _train_image_ids(path: Path, every: int) -> list[int]:
    tiers = np.load(path / "meta" / "trials" / "tiers.npy")
    ids = np.load(path / "meta" / "trials" / "frame_image_id.npy")
    return [int(i) for i in ids[tiers == "train"][::every]]


SELECTIONS = {
    "areas": dict(areas=["LM"]),
    "layers": dict(layers=["L4"]),
    "areas+layers": dict(areas=["V1"], layers=["L2/3"]),
    "neuron_n+base_seed": dict(neuron_n=6, neuron_base_seed=3),
    "neuron_n+seed": dict(neuron_n=6),
    "exclude_neuron_n": dict(neuron_n=4, exclude_neuron_n=3, neuron_base_seed=2),
    "neuron_ids": dict(neuron_ids=[[3, 1, 7], [2, 9, 4], [13, 5]]),
    "image_n+base_seed": dict(image_n=12, image_base_seed=2),
    "image_n+seed": dict(image_n=12),
    "exclude_images": dict(exclude="images"),
    "exclude_responses": dict(exclude="responses", include_behavior=True),
    "exclude_behavior": dict(exclude="behavior", include_behavior=True, include_eye_position=True),
    "exclude_pupil": dict(exclude="pupil_center", include_eye_position=True, add_eye_pos_as_channels=True),
    "tier_validation": dict(tier="validation", include_eye_position=True),
    "tier_train": dict(tier="train", include_behavior=True),
    "batch_size_1": dict(batch_size=1, tier="test"),
}


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_selections(sensorium, datasets, peer_paths, name):
    ours, peer = run_both(sensorium, datasets, peer_paths, **SELECTIONS[name])
    compare(ours, peer)


def test_image_ids(sensorium, datasets, peer_paths):
    image_ids = [_train_image_ids(path, every) for path, every in zip(datasets, (3, 4, 5))]
    ours, peer = run_both(sensorium, datasets, peer_paths, image_ids=image_ids, include_behavior=True)
    compare(ours, peer)
    assert [len(ours["train"][key].dataset) for key in KEYS] == [len(ids) for ids in image_ids]


def test_data_keys_follow_sensoriums_rules(sensorium, datasets, peer_paths):
    ours, peer = run_both(sensorium, datasets, peer_paths, tier="test")
    assert list(ours["test"]) == list(peer["test"]) == KEYS


def test_neuron_n_with_areas_draws_among_the_selected_neurons(sensorium, datasets, peer_paths):
    """The one documented difference in neuron selection (README, "Differences"): with areas/layers
    and neuron_n, sensorium draws among *all* neurons and then ignores areas/layers; we draw among
    the neurons of those areas, with the same RandomState draw."""
    options = dict(areas=["LM"], neuron_n=3, neuron_base_seed=4, tier="test")
    ours, peer = run_both(sensorium, datasets, peer_paths, **options)
    for key, path in zip(KEYS, datasets):
        unit_ids = np.load(path / "meta" / "neurons" / "unit_ids.npy")
        area = np.load(path / "meta" / "neurons" / "area.npy")
        expected_peer = np.random.RandomState(4 * 3).choice(unit_ids, size=3, replace=False)
        expected_ours = np.random.RandomState(4 * 3).choice(unit_ids[area == "LM"], size=3, replace=False)
        np.testing.assert_array_equal(_peer_neuron_ids(peer["test"][key]), expected_peer)
        np.testing.assert_array_equal(ours["test"][key].dataset.neurons.unit_ids, expected_ours)


@pytest.mark.realdata
def test_real_lurz_session(sensorium, real_data_path, tmp_path):
    """The real Lurz et al. 2021 subset: real images, statistics, behaviour, eye position and neurons."""
    require_skimage()
    options = dict(
        batch_size=128,
        tier="validation",
        include_behavior=True,
        include_eye_position=True,
        add_eye_pos_as_channels=True,
        scale=0.25,
        neuron_n=100,
        neuron_base_seed=1,
        cuda=False,
    )
    ours = static_loaders([str(real_data_path)], use_cache=False, **options)
    peer = sensorium.datasets.static_loaders([peer_shadow(real_data_path, tmp_path)], **options)
    compare(ours, peer)
    assert list(ours["validation"]) == ["20457-5-9-0"]
