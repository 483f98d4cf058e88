"""Pytest fixtures for data shared by every test module (loaded through tests/conftest.py).

* ``synthetic_dataset_path``: a synthetic Sensorium folder made once per test session (default sizes:
  60 neurons, 1500 train / 250 validation images, 50 test images x 10 repeats, 1x36x64), ground
  truth beside it (``pipeline.data.load_ground_truth``); session key "90001-1-1".
* ``synthetic_zip_path``: the same dataset as a .zip (folder inside the archive).
* ``synthetic_session_paths``: two sessions ("90001-1-1" above and a small "90002-1-1", 40 neurons).
* ``real_data_path``: the real Lurz 2020 subset in ../shared/data (skipped when absent).
* ``synthetic_loaders``: ``static_loaders`` over the synthetic dataset, batch size 32, seed 0.

Dataset caches go to a temporary folder for the whole test session (``SYSID_CACHE_DIR``), so tests
never write into the user's cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = (
    REPO_ROOT.parent
    / "shared"
    / "data"
    / "lurz2020-static20457-5-9-trainval-1000"
    / "static20457-5-9-preproc0"
)
SYNTHETIC_KEY = "90001-1-1"


@pytest.fixture(scope="session", autouse=True)
def _isolated_data_cache(tmp_path_factory):
    """Point the dataset cache at a temporary folder for the whole test session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYSID_CACHE_DIR", str(tmp_path_factory.mktemp("sysid-cache")))
        yield


@pytest.fixture(scope="session")
def synthetic_dataset_path(tmp_path_factory) -> Path:
    """Folder of a default-sized synthetic dataset with known ground truth (made once per session)."""
    from pipeline.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic") / f"static{SYNTHETIC_KEY}-synthetic", seed=0
    )


@pytest.fixture(scope="session")
def synthetic_zip_path(synthetic_dataset_path, tmp_path_factory) -> Path:
    """The synthetic dataset zipped like Sensorium distributes data."""
    from pipeline.data.synthetic import zip_dataset

    return zip_dataset(
        synthetic_dataset_path,
        tmp_path_factory.mktemp("synthetic-zip") / f"{synthetic_dataset_path.name}.zip",
    )


@pytest.fixture(scope="session")
def synthetic_session_paths(synthetic_dataset_path, tmp_path_factory) -> list[Path]:
    """Two synthetic sessions: the default one and a small second one (40 neurons, 300 train images)."""
    from pipeline.data.synthetic import make_synthetic_dataset

    second = make_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic2") / "static90002-1-1-synthetic",
        n_neurons=40,
        n_train=300,
        n_validation=60,
        n_test_images=10,
        n_repeats=5,
        seed=1,
        session="90002-1-1",
    )
    return [synthetic_dataset_path, second]


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    """The real Lurz 2020 subset (4994 trials, 1000 neurons); skips the test when it is absent."""
    if not (REAL_DATA / "meta" / "trials" / "tiers.npy").is_file():
        pytest.skip(f"real data not available at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture
def synthetic_loaders(synthetic_dataset_path):
    """``{tier: {"90001-1-1": loader}}`` over the synthetic dataset, batch size 32, seed 0."""
    from pipeline.data import static_loaders

    return static_loaders([str(synthetic_dataset_path)], batch_size=32, seed=0)
