"""StaticDataset: folder and zip reading, validation errors, the consolidated cache, read-only access."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import StaticDataset, get_data_key, make_synthetic_dataset
from pipeline.data import cache as data_cache

SMALL = dict(n_neurons=8, n_train=30, n_validation=6, n_test_images=3, n_repeats=4, image_shape=(12, 16))


def tree_digest(root: Path) -> str:
    """Hash of every file's relative path and bytes under root (or of a single file)."""
    digest = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(root.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    return make_synthetic_dataset(tmp_path / "static11-2-3-small", seed=4, **SMALL)


def test_folder_and_zip_give_identical_data(small_dataset, tmp_path):
    from pipeline.data.synthetic import zip_dataset

    zipped = zip_dataset(small_dataset, tmp_path / "zips" / f"{small_dataset.name}.zip")
    folder = StaticDataset(small_dataset, use_cache=False)
    archive = StaticDataset(zipped, use_cache=False)
    for field in ("images", "responses", "behavior", "pupil_center"):
        assert torch.equal(getattr(folder, field), getattr(archive, field)), field
    assert folder.fingerprint == archive.fingerprint
    assert folder.data_key == archive.data_key == "11-2-3"
    assert np.array_equal(folder.trial_info.tiers, archive.trial_info.tiers)
    assert folder.statistics["images"]["all"]["mean"] == archive.statistics["images"]["all"]["mean"]


def test_arrays_match_the_files(small_dataset):
    ds = StaticDataset(small_dataset, use_cache=False)
    n = 30 + 6 + 3 * 4
    assert len(ds) == n and ds.n_neurons == 8
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 1, 12, 16)
    assert ds.responses.dtype == torch.float32 and ds.responses.shape == (n, 8)
    assert ds.behavior.shape == (n, 3) and ds.pupil_center.shape == (n, 2)
    for i in (0, 17, n - 1):
        image = np.load(small_dataset / "data" / "images" / f"{i}.npy")
        assert np.array_equal(ds.images[i].numpy(), image.astype(np.uint8))
        assert np.allclose(
            ds.responses[i].numpy(), np.load(small_dataset / "data" / "responses" / f"{i}.npy")
        )
        assert np.allclose(ds.behavior[i].numpy(), np.load(small_dataset / "data" / "behavior" / f"{i}.npy"))
    assert ds.neurons.cell_motor_coordinates.shape == (8, 3)
    assert set(ds.trial_info.keys()) >= {"tiers", "frame_image_id", "trial_idx"}
    assert ds.tiers == ["train", "validation", "test"]
    assert len(ds.fingerprint) == 32 and int(ds.fingerprint, 16) >= 0
    assert "11-2-3" in repr(ds)


@pytest.mark.parametrize("trial", [0, 40])
def test_non_integer_images_stay_float(small_dataset, trial):
    from pipeline.data.files import open_source, read_trials

    image = np.load(small_dataset / "data" / "images" / f"{trial}.npy")
    np.save(small_dataset / "data" / "images" / f"{trial}.npy", image + 0.5)
    ds = StaticDataset(small_dataset, use_cache=False)
    assert ds.images.dtype == torch.float32
    assert np.allclose(ds.images[trial].numpy(), image + 0.5)
    # Read in small chunks: a non-integer chunk after uint8 chunks switches to float32 losslessly.
    names = [f"data/images/{i}.npy" for i in range(len(ds))]
    chunked = read_trials(open_source(small_dataset), names, "images", as_images=True, chunk=7)
    assert chunked.dtype == np.float32 and np.array_equal(chunked, ds.images.numpy())


def test_data_key_parsing(tmp_path):
    assert get_data_key("/x/static20457-5-9-preproc0") == "20457-5-9-0"
    assert (
        get_data_key("static21067-10-18-GrayImageNet-94c6ff995dac583098847cfecd43e7b6.zip") == "21067-10-18"
    )
    with pytest.raises(ValueError, match="session key"):
        get_data_key("/x/mydata")
    # Without a parseable name the key is rebuilt from the neuron metadata.
    path = make_synthetic_dataset(tmp_path / "plainname", session="4-5-6", **SMALL)
    assert StaticDataset(path, use_cache=False).data_key == "4-5-6"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / "data" / "responses" / "3.npy").unlink(), r"data/responses lacks 1 .*3\.npy"),
        (lambda p: np.save(p / "meta" / "trials" / "tiers.npy", np.load(p / "meta" / "trials" / "tiers.npy")[:-2]),
         r"meta/trials"),
        (lambda p: np.save(p / "data" / "responses" / "4.npy", np.zeros(9)), r"4\.npy has shape \(9,\)"),
        (lambda p: np.save(p / "data" / "images" / "2.npy", np.zeros((12, 16), np.float32)), r"images/2\.npy has shape"),
        (lambda p: (p / "data" / "images" / "1.npy").write_bytes(b"\x93NUMPY garbage"), r"images/1\.npy"),
        (lambda p: shutil.rmtree(p / "meta" / "statistics" / "responses"), r"statistics for 'responses'"),
        (lambda p: (p / "meta" / "statistics" / "images" / "all" / "std.npy").unlink(), r"images/all/std\.npy"),
        (lambda p: shutil.rmtree(p / "meta" / "neurons"), r"meta/neurons"),
        (lambda p: (p / "meta" / "neurons" / "unit_ids.npy").unlink(), r"unit_ids\.npy is missing"),
        (lambda p: np.save(p / "meta" / "neurons" / "area.npy", np.array(["V1"] * 3)), r"area\.npy has 3 entries"),
        (lambda p: np.save(p / "data" / "behavior" / "999.npy", np.zeros(3)), r"beyond the .* trials"),
    ],
    ids=["missing-trial", "short-meta", "response-shape", "image-shape", "corrupt-npy", "no-statistics",
         "no-image-std", "no-neurons", "no-unit-ids", "short-neuron-meta", "extra-trial"],
)  # fmt: skip
def test_malformed_data_gives_clear_errors(small_dataset, damage, message):
    damage(small_dataset)
    with pytest.raises(ValueError, match=message):
        StaticDataset(small_dataset, use_cache=False)


def test_missing_path_and_non_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StaticDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Sensorium dataset"):
        StaticDataset(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(ValueError, match="neither a folder nor a .zip"):
        StaticDataset(tmp_path / "file.txt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "no data here")
    with pytest.raises(ValueError, match="no Sensorium dataset"):
        StaticDataset(tmp_path / "other.zip")


def test_cache_hit_and_invalidation(small_dataset, tmp_path):
    cache_dir = tmp_path / "cache"
    first = StaticDataset(small_dataset, cache_dir=cache_dir)
    assert not first.from_cache
    assert len(list(cache_dir.glob("*.npz"))) == 1
    assert not list(cache_dir.glob("*.tmp"))  # the atomic write left no temporary file
    second = StaticDataset(small_dataset, cache_dir=cache_dir)
    assert second.from_cache
    for field in ("images", "responses", "behavior", "pupil_center"):
        assert torch.equal(getattr(first, field), getattr(second, field))
        assert getattr(first, field).dtype == getattr(second, field).dtype
    assert first.fingerprint == second.fingerprint
    # Changing one response value (same file size) selects a new entry with a new fingerprint.
    response_file = small_dataset / "data" / "responses" / "0.npy"
    values = np.load(response_file)
    values[0] += 1.0
    np.save(response_file, values)
    os.utime(response_file, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    third = StaticDataset(small_dataset, cache_dir=cache_dir)
    assert not third.from_cache
    assert third.fingerprint != first.fingerprint
    assert third.responses[0, 0] == pytest.approx(float(values[0]))
    assert StaticDataset(small_dataset, cache_dir=cache_dir).from_cache


def test_cache_disabled_and_corrupt_entry(small_dataset, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    StaticDataset(small_dataset, use_cache=False, cache_dir=cache_dir)
    assert not cache_dir.exists()
    # The environment variable chooses the folder when no argument is given.
    monkeypatch.setenv("SYSID_CACHE_DIR", str(cache_dir))
    assert data_cache.default_cache_dir() == cache_dir
    StaticDataset(small_dataset)
    (entry,) = cache_dir.glob("*.npz")
    entry.write_bytes(b"not a zip")  # a broken entry is a miss, then rewritten
    again = StaticDataset(small_dataset)
    assert not again.from_cache
    assert StaticDataset(small_dataset).from_cache
    assert data_cache.clear_cache(cache_dir) == 1
    assert not list(cache_dir.glob("*.npz"))


def test_loading_never_writes_into_the_dataset(small_dataset, tmp_path):
    from pipeline.data import static_loaders
    from pipeline.data.synthetic import zip_dataset

    zipped = zip_dataset(small_dataset, tmp_path / "zips" / "static11-2-3-small.zip")
    before = tree_digest(small_dataset), tree_digest(zipped)
    for path in (small_dataset, zipped):
        StaticDataset(path, cache_dir=tmp_path / "c")
        StaticDataset(path, cache_dir=tmp_path / "c")
        static_loaders([str(path)], batch_size=8, seed=0, cache_dir=str(tmp_path / "c"))
    assert (tree_digest(small_dataset), tree_digest(zipped)) == before
    assert sorted(p.name for p in small_dataset.iterdir()) == [
        "config.json", "data", "ground_truth.json", "ground_truth.npz", "meta",
    ]  # fmt: skip


@pytest.mark.realdata
def test_real_data(real_data_path):
    before = tree_digest(real_data_path / "meta")
    ds = StaticDataset(real_data_path)  # the test session's cache folder: later tests reuse the entry
    assert ds.data_key == "20457-5-9-0"
    assert len(ds) == 4994 and ds.n_neurons == 1000
    assert ds.images.shape == (4994, 1, 36, 64) and ds.images.dtype == torch.uint8
    tiers = ds.trial_info.tiers
    assert (tiers == "train").sum() == 4472 and (tiers == "validation").sum() == 522
    assert ds.tiers == ["train", "validation"]
    assert np.allclose(ds.images[0].numpy(), np.load(real_data_path / "data" / "images" / "0.npy"))
    assert np.allclose(
        ds.responses[4993].numpy(),
        np.load(real_data_path / "data" / "responses" / "4993.npy"),
        rtol=1e-6,
        atol=1e-12,
    )
    cached = StaticDataset(real_data_path)
    assert cached.from_cache and cached.fingerprint == ds.fingerprint
    assert torch.equal(cached.responses, ds.responses)
    assert tree_digest(real_data_path / "meta") == before
    assert sorted(p.name for p in real_data_path.iterdir()) == ["config.json", "data", "meta"]
