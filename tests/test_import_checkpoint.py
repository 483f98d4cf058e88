"""``sysid import-checkpoint``: a state dict made by the peer's builder becomes a trained model.

The peer is sensorium's ``stacked_core_full_gauss_readout`` on neuralpredictors 0.3.0
(tests/sensorium_peer.py); the checkpoint is its state dict after ``torch.save``. Imported, it gets
DataInfo, NeuronScore and ReadoutParameters rows like any trained model and predicts what the peer
model predicts. Files that do not load strictly, or are not plain state dicts, are refused with
nothing written. Skipped when the peer is not available.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from pipeline.data import make_synthetic_dataset, static_loaders
from tests.fixtures_db import REPO_ROOT
from tests.sensorium_peer import import_sensorium, peer_copy

CONFIG = dict(hidden_channels=6, input_kern=5, hidden_kern=3, layers=2, gamma_input=2.0, init_sigma=0.1)
MODEL_FN = "pipeline.models.stacked_core_full_gauss_readout"


@pytest.fixture(scope="module")
def peer_checkpoint(tmp_path_factory):
    """(our dataset folder, the peer model in eval mode, its state-dict file)."""
    sensorium = import_sensorium()
    root = tmp_path_factory.mktemp("import")
    ours = make_synthetic_dataset(
        root / "static90301-1-1-synthetic",
        n_neurons=9,
        n_train=40,
        n_validation=12,
        n_test_images=3,
        n_repeats=2,
        image_shape=(18, 22),
        seed=5,
    )
    theirs = peer_copy(ours, tmp_path_factory.mktemp("import-peer"))
    loaders = sensorium.datasets.static_loaders([theirs], batch_size=8, seed=0, cuda=False)
    peer = sensorium.models.stacked_core_full_gauss_readout(loaders, seed=7, **CONFIG)
    with torch.no_grad():  # not the initial state: move every parameter a little
        for parameter in peer.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    path = root / "peer_model.pth"
    torch.save(peer.state_dict(), path)
    return ours, peer.eval(), path


def _register(dataset_path, config=CONFIG):
    from schemas import Dataset, Model

    return (
        Dataset.add_entry("pipeline.data.static_loaders", {"paths": [str(dataset_path)], "batch_size": 8}),
        Model.add_entry(MODEL_FN, config),
    )


def test_cli_imports_a_peer_checkpoint_with_scores_and_readout_rows(empty_db, sysid_env, peer_checkpoint):
    import schemas

    dataset_path, peer, path = peer_checkpoint
    dataset, model = _register(dataset_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sysid",
            "import-checkpoint",
            str(path),
            "--dataset",
            dataset["dataset_hash"][:10],
            "--model",
            model["model_hash"][:10],
            "--seed",
            "4",
        ],
        env=sysid_env,
        cwd=str(REPO_ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imported" in done.stdout
    key = schemas.TrainedModel.keys()[0]
    assert key["seed"] == 4 and key["trainer_fn"] == "pipeline.training.imported.imported_checkpoint"
    imported = (schemas.ImportedCheckpoint & key).to_dicts()[0]
    assert imported["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert imported["source_path"] == str(path.resolve())
    assert len(schemas.DataInfo.Neuron & key) == 9
    assert len(schemas.NeuronScore.Unit & key & {"tier": "test"}) == 9
    assert len(schemas.ReadoutParameters.Unit & key) == 9
    ours = schemas.TrainedModel.load_model(key, include_dataloader=False)
    loader = next(iter(static_loaders([str(dataset_path)], batch_size=8, seed=0)["test"].values()))
    batch = next(iter(loader))
    with torch.no_grad():
        torch.testing.assert_close(ours(batch.images), peer(batch.images, data_key="90301-1-1"))
    # only the imported key: no worker pairs the file with another model, dataset or seed
    schemas.Seed.insert1({"seed": 5}, skip_duplicates=True)
    schemas.Model.add_entry(MODEL_FN, {**CONFIG, "layers": 3})
    assert len(schemas.TrainedModel().key_source & {"trainer_fn": key["trainer_fn"]}) == 1


def test_a_checkpoint_that_does_not_load_strictly_is_refused(empty_db, peer_checkpoint, tmp_path):
    import schemas
    from pipeline.training.imported import CheckpointError

    dataset_path, _, path = peer_checkpoint
    dataset, model = _register(dataset_path, {**CONFIG, "hidden_channels": 8})
    with pytest.raises(CheckpointError, match=r"does not load strictly.*other shapes"):
        schemas.import_checkpoint(path, dataset, model)
    pickled = tmp_path / "not_weights.pth"
    torch.save({"model": object()}, pickled)
    with pytest.raises(CheckpointError, match="weights_only"):
        schemas.import_checkpoint(pickled, dataset, model)
    with pytest.raises(CheckpointError, match="more than the limit"):
        schemas.import_checkpoint(path, dataset, model, max_bytes=100)
    assert len(schemas.Trainer()) == 0 and len(schemas.ImportedCheckpoint()) == 0
    assert len(schemas.TrainedModel()) == 0
