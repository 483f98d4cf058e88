"""The synthetic ground-truth generator: format, determinism, and that the truth is really in the data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import StaticDataset, load_ground_truth, make_synthetic_dataset
from pipeline.data.synthetic import gabor_filters, main, pink_noise_images

SMALL = dict(n_neurons=12, n_train=40, n_validation=10, n_test_images=4, n_repeats=3, image_shape=(20, 24))


def test_format_matches_sensorium(synthetic_dataset_path):
    root = synthetic_dataset_path
    n = 1500 + 250 + 50 * 10
    assert len(list((root / "data" / "images").iterdir())) == n
    image = np.load(root / "data" / "images" / "0.npy")
    assert image.dtype == np.float32 and image.shape == (1, 36, 64)
    assert np.array_equal(image, np.round(image)) and image.min() >= 0 and image.max() <= 255
    responses = np.load(root / "data" / "responses" / "7.npy")
    assert responses.dtype == np.float64 and responses.shape == (60,) and (responses >= 0).all()
    assert np.load(root / "data" / "behavior" / "3.npy").shape == (3,)
    assert np.load(root / "data" / "pupil_center" / "3.npy").shape == (2,)
    tiers = np.load(root / "meta" / "trials" / "tiers.npy")
    assert {t: int((tiers == t).sum()) for t in np.unique(tiers)} == {
        "train": 1500,
        "validation": 250,
        "test": 500,
    }
    ids = np.load(root / "meta" / "trials" / "frame_image_id.npy")
    _, counts = np.unique(ids[tiers == "test"], return_counts=True)
    assert (counts == 10).all() and len(counts) == 50
    assert len(np.unique(ids[tiers == "train"])) == 1500
    assert np.load(root / "meta" / "neurons" / "cell_motor_coordinates.npy").shape == (60, 3)
    for field in ("images", "responses", "behavior", "pupil_center"):
        for kind in ("all", "stimulus_frame"):
            for stat in ("mean", "std", "min", "max", "median"):
                assert (root / "meta" / "statistics" / field / kind / f"{stat}.npy").is_file()


def test_statistics_are_computed_over_all_trials(synthetic_dataset_path):
    ds = StaticDataset(synthetic_dataset_path)
    stats = ds.statistics
    assert np.allclose(stats["responses"]["all"]["mean"], ds.responses.numpy().mean(0), rtol=1e-5)
    assert np.allclose(stats["responses"]["all"]["std"], ds.responses.numpy().std(0), rtol=1e-4)
    images = ds.images.numpy().astype(np.float64)
    assert np.isclose(float(stats["images"]["all"]["mean"]), images.mean(), rtol=1e-5)
    assert np.isclose(float(stats["images"]["all"]["std"]), images.std(), rtol=1e-5)
    assert np.allclose(stats["pupil_center"]["all"]["std"], ds.pupil_center.numpy().std(0), rtol=1e-4)


def test_ground_truth_is_recoverable_from_the_data(synthetic_dataset_path):
    truth = load_ground_truth(synthetic_dataset_path)
    ds = StaticDataset(synthetic_dataset_path)
    n = truth["n_neurons"]
    assert truth["rf_x"].shape == truth["rf_y"].shape == (n,)
    assert np.abs(truth["rf_x"]).max() <= 0.6 and np.abs(truth["rf_y"]).max() <= 0.6
    # RFs are spread out, not clumped in the centre.
    assert truth["rf_x"].std() > 0.2 and truth["rf_y"].std() > 0.2
    # Cortex positions predict RF positions through the stored linear map.
    predicted = truth["cortex_xyz"][:, :2] @ truth["mapping"].T
    assert np.corrcoef(predicted[:, 0], truth["rf_x"])[0, 1] > 0.98
    assert np.corrcoef(predicted[:, 1], truth["rf_y"])[0, 1] > 0.98
    # Noisy responses follow the stored noise-free rates: signal is strong.
    responses = ds.responses.numpy()
    per_neuron = [np.corrcoef(truth["rates"][:, i], responses[:, i])[0, 1] for i in range(n)]
    assert np.median(per_neuron) > 0.7
    assert truth["noise"]["type"] == "poisson"
    # Test rates are the rates of the test images (in test_image_ids order).
    ids = ds.trial_info.frame_image_id
    first = [int(np.flatnonzero(ids == i)[0]) for i in truth["test_image_ids"]]
    assert np.allclose(truth["test_rates"], truth["rates"][first])


def test_rates_follow_the_documented_model(tmp_path):
    """Recompute the rates from the stored images and parameters by direct filtering and pooling."""
    import torch
    import torch.nn.functional as F

    path = make_synthetic_dataset(tmp_path / "static1-1-1-x", noise="none", seed=3, **SMALL)
    truth = load_ground_truth(path)
    ds = StaticDataset(path, use_cache=False)
    images = (ds.images.numpy().astype(np.float64) - 128.0) / 50.0
    k = truth["filters"].shape[-1]
    fmaps = F.conv2d(
        torch.from_numpy(images), torch.from_numpy(truth["filters"][:, None]), padding=k // 2
    ).numpy()
    h, w = images.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w]
    rates = np.empty((len(ds), ds.n_neurons))
    for n in range(ds.n_neurons):
        cy, cx = (truth["rf_y"][n] + 1) / 2 * (h - 1), (truth["rf_x"][n] + 1) / 2 * (w - 1)
        pool = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * truth["pool_sigma"] ** 2))
        pooled = (fmaps[:, truth["feature_index"][n]] * pool / pool.sum()).sum(axis=(1, 2))
        z = (pooled - truth["pooled_mean"][n]) / truth["pooled_std"][n]
        rates[:, n] = truth["rate_scale"][n] * np.log1p(np.exp(truth["gains"][n] * z + truth["biases"][n]))
    assert np.allclose(rates, truth["rates"], rtol=1e-6)
    # With no noise the stored responses are the rates, and repeats of an image respond identically.
    assert np.allclose(ds.responses.numpy(), truth["rates"], rtol=1e-5)


def test_deterministic_for_a_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", seed=5, **SMALL)
    b = make_synthetic_dataset(tmp_path / "b", seed=5, **SMALL)
    c = make_synthetic_dataset(tmp_path / "c", seed=6, **SMALL)
    fa, fb, fc = (StaticDataset(p, use_cache=False).fingerprint for p in (a, b, c))
    assert fa == fb != fc
    assert np.array_equal(load_ground_truth(a)["rf_x"], load_ground_truth(b)["rf_x"])


def test_refuses_to_overwrite_and_validates(tmp_path):
    path = make_synthetic_dataset(tmp_path / "d", **SMALL)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_dataset(path, **SMALL)
    make_synthetic_dataset(path, overwrite=True, seed=1, **SMALL)
    with pytest.raises(ValueError, match="n_neurons"):
        make_synthetic_dataset(tmp_path / "e", **{**SMALL, "n_neurons": 0})
    with pytest.raises(ValueError, match="noise"):
        make_synthetic_dataset(tmp_path / "e", noise="laplace", **SMALL)
    with pytest.raises(ValueError, match="session"):
        make_synthetic_dataset(tmp_path / "e", session="abc", **SMALL)
    assert not (tmp_path / "e").exists()
    with pytest.raises(FileNotFoundError, match="ground_truth"):
        load_ground_truth(tmp_path)


def test_building_blocks():
    filters = gabor_filters(4, size=9)
    assert filters.shape == (4, 9, 9)
    assert np.allclose(filters.sum(axis=(1, 2)), 0, atol=1e-10)
    assert np.allclose(np.linalg.norm(filters.reshape(4, -1), axis=1), 1)
    images = pink_noise_images(20, (32, 32), np.random.default_rng(0))
    assert images.shape == (20, 1, 32, 32) and images.dtype == np.float32
    # 1/f images have more power at low than at high spatial frequencies.
    power = np.abs(np.fft.fft2(images[:, 0] - images[:, 0].mean())) ** 2
    assert power[:, 1, 1].mean() > 10 * power[:, 16, 16].mean()


def test_command_line(tmp_path, capsys):
    out = tmp_path / "static7-1-2-cli"
    main([str(out), "--neurons", "5", "--train", "10", "--validation", "4", "--test-images", "2", "--repeats", "2",
          "--height", "16", "--width", "16", "--zip"])  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    ds = StaticDataset(str(out) + ".zip", use_cache=False)
    assert ds.n_neurons == 5 and len(ds) == 18 and ds.data_key == "7-1-2"
    assert load_ground_truth(str(out) + ".zip")["n_neurons"] == 5
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "ground truth" in capsys.readouterr().out
