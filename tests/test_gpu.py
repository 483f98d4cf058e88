"""Tests that need a CUDA device (marker ``cuda``; skipped without one): run by ``benchmarks/gpu_suite.sh``.

Device-resident loader tiers, bf16 autocast, ``torch.compile``, a checkpoint written while training
on the GPU resumed on the CPU, and the device recorded in the database.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.data import make_synthetic_dataset, static_loaders
from pipeline.models.builders import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer
from tests.model_configs import TINY_SOTA_MODEL

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SIZES = dict(n_train=96, n_validation=32, n_test_images=4, n_repeats=4, image_shape=(24, 32))
MODEL = TINY_SOTA_MODEL
TRAINER = dict(lr_init=0.009, lr_decay_steps=4, avg_loss=False, progress=False, verbose=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return str(
        make_synthetic_dataset(
            tmp_path_factory.mktemp("gpu") / "static1-1-1-synthetic", n_neurons=40, seed=5, **SIZES
        )
    )


def _train(path: str, device: str, **kwargs):
    loaders = static_loaders([path], batch_size=16, seed=3, device=device if device != "cpu" else None)
    model = stacked_core_full_gauss_readout(loaders, seed=7, **MODEL)
    return standard_trainer(model, loaders, seed=7, device=device, **{**TRAINER, **kwargs}), model


def test_device_resident_tiers_give_the_cpu_batches_in_the_same_order(dataset):
    cpu = static_loaders([dataset], batch_size=16, seed=3)
    gpu = static_loaders([dataset], batch_size=16, seed=3, device="cuda")
    for tier in ("train", "validation"):
        for c_loader, g_loader in zip(cpu[tier].values(), gpu[tier].values()):
            assert g_loader.dataset.device.type == "cuda"
            for c_batch, g_batch in zip(c_loader, g_loader):
                assert g_batch.images.device.type == "cuda" and g_batch.responses.device.type == "cuda"
                torch.testing.assert_close(g_batch.images.cpu(), c_batch.images)
                torch.testing.assert_close(g_batch.responses.cpu(), c_batch.responses)


def test_gpu_training_matches_the_cpu_and_bf16_stays_close(dataset):
    (cpu_score, cpu_out, _), _ = _train(dataset, "cpu", max_iter=2)
    (gpu_score, gpu_out, gpu_state), _ = _train(dataset, "cuda", max_iter=2)
    (bf_score, bf_out, _), _ = _train(dataset, "cuda", max_iter=2, amp="bf16")
    assert gpu_out["device"].startswith("cuda")
    assert all(t.device.type == "cpu" for t in gpu_state.values())  # returned as CPU tensors
    # fp32 on the GPU: the CPU's curve up to float rounding (cuDNN vs oneDNN)
    np.testing.assert_allclose(gpu_out["train_loss"], cpu_out["train_loss"], rtol=2e-3)
    assert abs(gpu_score - cpu_score) < 0.01
    # bf16 autocast: finite, and a similar (not equal) curve
    assert all(math.isfinite(v) for v in bf_out["train_loss"])
    np.testing.assert_allclose(bf_out["train_loss"], gpu_out["train_loss"], rtol=0.05)
    assert abs(bf_score - gpu_score) < 0.05


def test_compiled_training_matches_eager_on_the_gpu(dataset):
    (eager_score, eager_out, _), _ = _train(dataset, "cuda", max_iter=2)
    (comp_score, comp_out, comp_state), model = _train(dataset, "cuda", max_iter=2, compile=True)
    np.testing.assert_allclose(comp_out["train_loss"], eager_out["train_loss"], rtol=2e-3)
    assert abs(comp_score - eager_score) < 0.01
    assert not any(k.startswith("_orig_mod") for k in comp_state)  # the state dict keeps its names


def test_checkpoint_written_on_the_gpu_resumes_on_the_cpu(dataset):
    states = []

    def keep_first(record):
        if record.epoch == 1:
            states.append(record.training_state())

    (full_score, full_out, _), _ = _train(dataset, "cuda", max_iter=3, cb=keep_first)
    (state,) = states
    tensors = [v for v in _leaves(state) if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)  # loadable without a GPU
    (score, out, final), model = _train(dataset, "cpu", max_iter=3, resume_state=state)
    assert out["device"] == "cpu" and next(model.parameters()).device.type == "cpu"
    assert len(out["train_loss"]) == 3
    np.testing.assert_allclose(out["train_loss"][:1], full_out["train_loss"][:1], rtol=1e-6)
    np.testing.assert_allclose(out["train_loss"][1:], full_out["train_loss"][1:], rtol=5e-3)
    assert abs(score - full_score) < 0.02


def _leaves(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


def test_device_recorded_in_the_database_is_the_gpu(empty_db, dataset):
    import schemas
    from schemas import Dataset, Model, Seed, TrainedModel, Trainer

    Seed.insert([{"seed": 1}], skip_duplicates=True)
    key = {
        **Dataset.add_entry(
            "pipeline.data.static_loaders", {"paths": [dataset], "batch_size": 16, "cuda": True}
        ),
        **Model.add_entry("pipeline.models.stacked_core_full_gauss_readout", MODEL),
        **Trainer.add_entry("pipeline.training.standard_trainer", {"max_iter": 1, "device": "cuda"}),
        "seed": 1,
    }
    schemas.populate_all(reserve_jobs=True)
    row = (TrainedModel() & key).to_dicts()[0]
    assert row["device"].startswith("cuda:0 (") and torch.cuda.get_device_name(0)[:20] in row["device"]
    model = TrainedModel().load_model(key, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
