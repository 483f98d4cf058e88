"""static_loaders / TensorLoader: tiers, normalisation, subsets, channels, scale, shuffling, by-image batches."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.data import StaticDataset, TensorLoader, make_synthetic_dataset, static_loader, static_loaders
from pipeline.data import loaders as loaders_module

SMALL = dict(n_neurons=10, n_train=40, n_validation=7, n_test_images=3, n_repeats=4, image_shape=(12, 16))
KEY = "12-3-4"


@pytest.fixture(scope="module")
def small_path(tmp_path_factory):
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("loaders") / f"static{KEY}-small", seed=2, areas=("V1", "LM"), **SMALL
    )


@pytest.fixture
def small_loaders(small_path):
    return static_loaders(
        [str(small_path)], batch_size=8, seed=0, include_behavior=True, include_eye_position=True
    )


def stats_of(path, field, name):
    return np.load(path / "meta" / "statistics" / field / "all" / f"{name}.npy").astype(np.float64)


def test_tiers_lengths_and_dataset_view(small_loaders):
    assert list(small_loaders) == ["train", "validation", "test"]
    train = small_loaders["train"][KEY]
    assert isinstance(train, TensorLoader)
    assert len(train.dataset) == 40 and len(train) == 5 and train.batch_size == 8
    assert len(small_loaders["validation"][KEY]) == 1
    test = small_loaders["test"][KEY]
    assert len(test.dataset) == 12 and len(test) == 2
    view = train.dataset
    assert view.data_key == KEY and view.n_neurons == 10
    assert (view.trial_info.tiers == "train").all() and len(view.trial_info.frame_image_id) == 40
    assert view.neurons.cell_motor_coordinates.shape == (10, 3)
    assert view.statistics["responses"]["all"]["std"].shape == (10,)
    assert len(view.fingerprint) == 32
    sizes = [b.images.shape[0] for b in train]
    assert sizes == [8] * 5 and sum(sizes) == len(train.dataset)


@pytest.mark.parametrize("per_batch", [False, True], ids=["normalised-once", "uint8-per-batch"])
def test_batches_fields_shapes_and_normalisation(small_path, monkeypatch, per_batch):
    """Validation keeps file order, so each batch can be checked against a hand computation."""
    if per_batch:  # the path large or GPU tiers take: uint8 in memory, normalised per batch
        monkeypatch.setattr(loaders_module, "PRENORMALIZE_MAX_BYTES", 0)
    loaders = static_loaders(
        [str(small_path)],
        batch_size=8,
        seed=0,
        include_behavior=True,
        include_eye_position=True,
        add_eye_pos_as_channels=True,
    )
    loader = loaders["validation"][KEY]
    assert loader.dataset.images.dtype == (torch.uint8 if per_batch else torch.float32)
    batch = next(iter(loader))
    assert batch._fields == ("images", "responses", "behavior", "pupil_center")
    assert set(batch._asdict()) == set(batch._fields)
    assert batch.images.shape == (7, 1 + 3 + 2, 12, 16) and batch.images.dtype == torch.float32
    assert (
        batch.responses.shape == (7, 10)
        and batch.behavior.shape == (7, 3)
        and batch.pupil_center.shape == (7, 2)
    )
    trials = np.flatnonzero(np.load(small_path / "meta" / "trials" / "tiers.npy") == "validation")
    assert np.array_equal(loader.dataset.trial_indices, trials)
    raw = {f: np.stack([np.load(small_path / "data" / f / f"{i}.npy") for i in trials]) for f in
           ("images", "responses", "behavior", "pupil_center")}  # fmt: skip
    image = (raw["images"] - stats_of(small_path, "images", "mean")) / stats_of(small_path, "images", "std")
    assert np.allclose(batch.images[:, :1].numpy(), image, atol=1e-5)
    std = stats_of(small_path, "responses", "std")
    assert np.allclose(batch.responses.numpy(), raw["responses"] / std, rtol=1e-5)
    behavior = raw["behavior"] / stats_of(small_path, "behavior", "std")
    assert np.allclose(batch.behavior.numpy(), behavior, rtol=1e-5)
    pupil = (raw["pupil_center"] - stats_of(small_path, "pupil_center", "mean")) / stats_of(
        small_path, "pupil_center", "std"
    )
    assert np.allclose(batch.pupil_center.numpy(), pupil, rtol=1e-4, atol=1e-5)
    # Behaviour and eye position channels are constant maps of the normalised values.
    assert np.allclose(
        batch.images[:, 1:4].numpy(), behavior[:, :, None, None] * np.ones((1, 1, 12, 16)), rtol=1e-5
    )
    assert np.allclose(
        batch.images[:, 4:6].numpy(), pupil[:, :, None, None] * np.ones((1, 1, 12, 16)), atol=1e-4
    )
    # A single trial, without the batch dimension.
    item = loader.dataset[2]
    assert item.images.shape == (6, 12, 16) and torch.equal(item.responses, batch.responses[2])


def test_response_std_floor_and_exclude(small_path, tmp_path):
    path = tmp_path / small_path.name
    shutil.copytree(small_path, path)
    std_file = path / "meta" / "statistics" / "responses" / "all" / "std.npy"
    std = np.load(std_file)
    std[0] = 1e-8  # a silent neuron: its std is floored at 1% of the mean std
    np.save(std_file, std)
    loaders = static_loaders([str(path)], batch_size=100, tier="validation", exclude="images")
    batch = next(iter(loaders["validation"][KEY]))
    ds = StaticDataset(path)
    trials = loaders["validation"][KEY].dataset.trial_indices
    floor = 0.01 * std.astype(np.float64).mean()
    assert np.allclose(batch.responses[:, 0].numpy(), ds.responses[trials, 0].numpy() / floor, rtol=1e-5)
    assert np.allclose(batch.responses[:, 1].numpy(), ds.responses[trials, 1].numpy() / std[1], rtol=1e-5)
    # exclude="images" leaves images raw (0..255) while responses are still normalised.
    assert torch.equal(batch.images, ds.images[trials].float())
    raw = static_loaders([str(path)], batch_size=100, tier="validation", normalize=False)
    assert torch.equal(next(iter(raw["validation"][KEY])).responses, ds.responses[trials])


def test_train_shuffling_is_seeded(small_path):
    def epoch_ids(loader):
        return torch.cat([b.responses[:, 0] for b in loader]).tolist()

    a = static_loaders([str(small_path)], batch_size=8, seed=3)["train"][KEY]
    b = static_loaders([str(small_path)], batch_size=8, seed=3)["train"][KEY]
    c = static_loaders([str(small_path)], batch_size=8, seed=4)["train"][KEY]
    first_a, second_a = epoch_ids(a), epoch_ids(a)
    assert first_a == epoch_ids(b) and second_a == epoch_ids(b)
    assert first_a != second_a  # a new permutation every pass
    assert sorted(first_a) == sorted(second_a)  # ... of the same trials
    assert first_a != epoch_ids(c)
    # The shuffling state can be saved and restored (for resuming training).
    state = a.state_dict()
    expected = epoch_ids(a)
    a.load_state_dict(state)
    assert epoch_ids(a) == expected
    # Non-train tiers keep file order.
    val = static_loaders([str(small_path)], batch_size=3, seed=3)["validation"][KEY]
    assert epoch_ids(val) == epoch_ids(val)


def test_neuron_selection(small_path):
    unit_ids = np.load(small_path / "meta" / "neurons" / "unit_ids.npy")
    areas = np.load(small_path / "meta" / "neurons" / "area.npy")
    ds = StaticDataset(small_path)
    common = dict(batch_size=100, tier="validation", normalize=False)
    # neuron_n with a base seed: the same draw as sensorium (RandomState(base * n).choice over unit ids).
    view = static_loaders([str(small_path)], neuron_n=4, neuron_base_seed=7, **common)["validation"][
        KEY
    ].dataset
    expected = np.random.RandomState(7 * 4).choice(unit_ids, size=4, replace=False)
    assert np.array_equal(view.neurons.unit_ids, expected)
    again = static_loaders([str(small_path)], neuron_n=4, neuron_base_seed=7, **common)["validation"][
        KEY
    ].dataset
    assert np.array_equal(again.neurons.unit_ids, expected)
    columns = [int(np.flatnonzero(unit_ids == u)[0]) for u in expected]
    assert torch.equal(view.responses, ds.responses[view.trial_indices][:, columns])
    assert view.statistics["responses"]["all"]["mean"].shape == (4,)
    # areas
    lm = static_loaders([str(small_path)], areas=["LM"], **common)["validation"][KEY].dataset
    assert (lm.neurons.area == "LM").all() and lm.n_neurons == int((areas == "LM").sum()) == 5
    # neuron_ids keep the given order
    picked = static_loaders([str(small_path)], neuron_ids=[[9, 2, 5]], **common)["validation"][KEY].dataset
    assert list(picked.neurons.unit_ids) == [9, 2, 5]
    assert torch.equal(picked.responses[:, 0], ds.responses[picked.trial_indices, 8])
    with pytest.raises(ValueError, match="neuron_ids cannot be combined"):
        static_loaders([str(small_path)], neuron_ids=[[1]], neuron_n=1, **common)
    with pytest.raises(ValueError, match="not in meta/neurons/unit_ids"):
        static_loaders([str(small_path)], neuron_ids=[[99]], **common)
    with pytest.raises(ValueError, match="exceeds"):
        static_loaders([str(small_path)], neuron_n=11, neuron_base_seed=1, **common)
    with pytest.raises(ValueError, match="no neuron matches"):
        static_loaders([str(small_path)], areas=["V4"], **common)


def test_image_selection(small_path):
    tiers = np.load(small_path / "meta" / "trials" / "tiers.npy")
    frame_ids = np.load(small_path / "meta" / "trials" / "frame_image_id.npy")
    train = np.flatnonzero(tiers == "train")
    view = static_loaders([str(small_path)], batch_size=8, image_n=10, image_base_seed=2)["train"][
        KEY
    ].dataset
    expected = np.sort(np.random.RandomState(2 * 10).choice(train, size=10, replace=False))
    assert np.array_equal(view.trial_indices, expected) and len(view) == 10
    ids = frame_ids[train[[3, 1]]]
    chosen = static_loaders([str(small_path)], batch_size=8, image_ids=[list(ids)])["train"][KEY].dataset
    assert sorted(chosen.trial_info.frame_image_id) == sorted(ids)
    # image selection applies to the train tier only
    loaders = static_loaders([str(small_path)], batch_size=8, image_n=10, image_base_seed=2)
    assert len(loaders["validation"][KEY].dataset) == 7
    test_id = frame_ids[tiers == "test"][0]
    with pytest.raises(ValueError, match="not train"):
        static_loaders([str(small_path)], batch_size=8, image_ids=[[test_id]])
    with pytest.raises(ValueError, match="image_ids cannot be combined"):
        static_loaders([str(small_path)], batch_size=8, image_ids=[[1]], image_n=3)


@pytest.mark.parametrize("per_batch", [False, True], ids=["normalised-once", "float-per-batch"])
def test_scale_resizes_like_sensorium(small_path, monkeypatch, per_batch):
    """Halving: sensorium's bilinear rescale on pixel centres averages each 2 x 2 block (no anti-aliasing)."""
    if per_batch:
        monkeypatch.setattr(loaders_module, "PRENORMALIZE_MAX_BYTES", 0)
    loaders = static_loaders(
        [str(small_path)], batch_size=100, tier="validation", scale=0.5, include_behavior=True
    )
    view = loaders["validation"][KEY].dataset
    batch = next(iter(loaders["validation"][KEY]))
    assert batch.images.shape == (7, 4, 6, 8) and view.input_shape == (4, 6, 8)
    ds = StaticDataset(small_path)
    full = ds.images[view.trial_indices].float()
    expected = F.avg_pool2d(full, 2)
    expected = (expected - float(ds.statistics["images"]["all"]["mean"])) / float(
        ds.statistics["images"]["all"]["std"]
    )
    assert torch.allclose(batch.images[:, :1], expected, atol=1e-5)
    # Scaled images are stored as float32; normalising a batch must not modify the stored tensor.
    assert view.images.dtype == torch.float32
    assert torch.equal(next(iter(loaders["validation"][KEY])).images, batch.images)
    with pytest.raises(ValueError, match="scale"):
        static_loaders([str(small_path)], batch_size=8, scale=0)


@pytest.mark.parametrize(("add_eye_pos_as_channels", "channels"), [(None, 1), (False, 1), (True, 3)], ids=str)
def test_eye_position_channels_only_when_asked(small_path, add_eye_pos_as_channels, channels):
    """sensorium's rule: include_eye_position alone gives the pupil_center field, no image channel."""
    loaders = static_loaders(
        [str(small_path)],
        batch_size=4,
        tier="validation",
        include_eye_position=True,
        add_eye_pos_as_channels=add_eye_pos_as_channels,
    )
    batch = next(iter(loaders["validation"][KEY]))
    assert batch._fields == ("images", "responses", "pupil_center")
    assert batch.images.shape[1] == channels and loaders["validation"][KEY].dataset.input_shape[0] == channels
    if channels == 3:
        assert torch.equal(batch.images[:, 1:, 0, 0], batch.pupil_center)


def test_eye_position_channels_need_the_eye_position(small_path):
    with pytest.raises(ValueError, match="add_eye_pos_as_channels=True needs include_eye_position"):
        static_loaders([str(small_path)], batch_size=4, add_eye_pos_as_channels=True)


def test_by_image_groups_repeats(small_path):
    loaders = static_loaders([str(small_path)], batch_size=5, normalize=False)
    test = loaders["test"][KEY]
    groups = list(test.by_image())
    assert len(groups) == 3 and all(g.images.shape[0] == 4 for g in groups)
    ids = test.dataset.trial_info.frame_image_id
    seen = list(dict.fromkeys(ids.tolist()))  # first-seen order
    for group, index, image_id in zip(groups, test.dataset.image_groups(), seen):
        assert (ids[index.numpy()] == image_id).all()
        assert (group.images == group.images[0]).all()  # all repeats show the same image
    sampler = static_loaders([str(small_path)], batch_size=5, return_test_sampler=True, normalize=False)[
        "test"
    ][KEY]
    assert len(sampler) == 3 and [b.responses.shape[0] for b in sampler] == [4, 4, 4]
    assert torch.equal(next(iter(sampler)).responses, groups[0].responses)


def test_several_sessions_and_single_loader(small_path, tmp_path):
    other = make_synthetic_dataset(tmp_path / "static5-6-7-other", seed=9, **{**SMALL, "n_neurons": 4})
    loaders = static_loaders([str(small_path), str(other)], batch_size=32, seed=0)
    assert set(loaders["train"]) == {KEY, "5-6-7"}
    assert loaders["train"]["5-6-7"].dataset.n_neurons == 4
    assert loaders["test"][KEY].dataset.n_neurons == 10
    # each session shuffles with its own stream derived from the seed
    assert loaders["train"][KEY].seed != loaders["train"]["5-6-7"].seed
    with pytest.raises(ValueError, match="share the session key"):
        static_loaders([str(small_path), str(small_path)], batch_size=8)
    key, single = static_loader(str(small_path), batch_size=8, get_key=True)
    assert key == KEY and set(single) == {"train", "validation", "test"}


def test_bad_arguments(small_path):
    with pytest.raises(ValueError, match="batch_size"):
        static_loaders([str(small_path)], batch_size=0)
    with pytest.raises(ValueError, match="tier 'final_test' not in the data"):
        static_loaders([str(small_path)], batch_size=8, tier="final_test")
    with pytest.raises(ValueError, match="file_tree=False"):
        static_loaders([str(small_path)], batch_size=8, file_tree=False)
    with pytest.raises(ValueError, match="exclude names unknown"):
        static_loaders([str(small_path)], batch_size=8, exclude="pixels")
    with pytest.raises(ValueError, match="at least one"):
        static_loaders([], batch_size=8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            static_loaders([str(small_path)], batch_size=8, cuda=True)


def test_matches_the_peer_normalisation(small_path, tmp_path):
    """Our normalised batches equal neuralpredictors' FileTreeDataset + NeuroNormalizer items."""
    from tests.peer import import_neuralpredictors

    try:
        import_neuralpredictors()
    except ImportError:
        pytest.skip("neuralpredictors is not installed")
    from neuralpredictors.data.datasets import FileTreeDataset
    from neuralpredictors.data.transforms import NeuroNormalizer, ToTensor

    copy = tmp_path / small_path.name
    shutil.copytree(small_path, copy)  # the peer may write config.json into the folder
    peer = FileTreeDataset(str(copy), "images", "responses", "behavior", "pupil_center")
    peer.transforms.extend([NeuroNormalizer(peer), ToTensor()])
    loader = static_loaders([str(small_path)], batch_size=100, tier="validation", include_behavior=True,
                            include_eye_position=True, add_behavior_as_channels=False,
                            add_eye_pos_as_channels=False)["validation"][KEY]  # fmt: skip
    batch = next(iter(loader))
    for row, trial in enumerate(loader.dataset.trial_indices):
        item = peer[int(trial)]
        assert torch.allclose(batch.images[row], item.images, atol=1e-5)
        assert torch.allclose(batch.responses[row], item.responses, rtol=1e-5)
        assert torch.allclose(batch.behavior[row], item.behavior, rtol=1e-5)
        assert torch.allclose(batch.pupil_center[row], item.pupil_center, rtol=1e-4, atol=1e-5)


@pytest.mark.realdata
def test_real_data_loaders(real_data_path):
    loaders = static_loaders([str(real_data_path)], batch_size=128, seed=0)
    assert list(loaders) == ["train", "validation"]
    train, val = loaders["train"]["20457-5-9-0"], loaders["validation"]["20457-5-9-0"]
    assert len(train.dataset) == 4472 and len(val.dataset) == 522 and len(train) == 35
    batch = next(iter(train))
    assert batch.images.shape == (128, 1, 36, 64) and batch.responses.shape == (128, 1000)
    assert abs(float(batch.images.mean())) < 0.5 and 0.5 < float(batch.images.std()) < 1.5
    small = static_loaders([str(real_data_path)], batch_size=64, tier="validation", scale=0.25, neuron_n=50,
                           neuron_base_seed=1)["validation"]["20457-5-9-0"]  # fmt: skip
    assert next(iter(small)).images.shape == (64, 1, 9, 16) and small.dataset.n_neurons == 50
