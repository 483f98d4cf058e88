"""The standard trainer, early stopping and the cycler on a tiny synthetic Poisson problem."""

from __future__ import annotations

import io
import math
import random
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.training import (
    EarlyStopping,
    LongCycler,
    StopTraining,
    TrainingDivergedError,
    TrainingRun,
    load_training_state,
    save_training_state,
    standard_trainer,
)

Batch = namedtuple("Batch", ["images", "responses"])
EyeBatch = namedtuple("EyeBatch", ["images", "responses", "pupil_center"])


class ToyDataset:
    """Just enough of a tier view: its length and the arrays."""

    def __init__(self, images: torch.Tensor, responses: torch.Tensor, image_ids: np.ndarray | None = None):
        self.images, self.responses = images, responses
        self.n_neurons = responses.shape[1]
        if image_ids is not None:
            self.trial_info = type("TrialInfo", (), {"frame_image_id": image_ids})()

    def __len__(self) -> int:
        return len(self.images)


class ToyLoader:
    """A list-of-namedtuple loader with its own seeded generator when it shuffles."""

    def __init__(self, dataset: ToyDataset, batch_size: int, shuffle: bool = False, seed: int = 0):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield Batch(self.dataset.images[idx], self.dataset.responses[idx])


class ToyRegularized(nn.Module):
    def __init__(self, module: nn.Module, gamma: float):
        super().__init__()
        self.module, self.gamma = module, gamma

    def regularizer(self, data_key: str | None = None) -> torch.Tensor:
        return self.gamma * self.module.weight.abs().sum()


class ToyReadouts(nn.ModuleDict):
    def regularizer(self, data_key: str) -> torch.Tensor:
        return self[data_key].regularizer()


class ToyModel(nn.Module):
    """Linear 'core' over pixels, a linear readout per session, elu + 1; noise in train mode (uses the RNG)."""

    def __init__(self, n_pixels: int, n_neurons: dict[str, int], hidden: int = 6, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.core = ToyRegularized(nn.Linear(n_pixels, hidden), gamma=1e-4)
        self.readout = ToyReadouts(
            {k: ToyRegularized(nn.Linear(hidden, n), gamma=1e-4) for k, n in n_neurons.items()}
        )

    def forward(self, images, data_key=None, detach_core=False, **kwargs):
        x = self.core.module(images.flatten(1))
        if detach_core:
            x = x.detach()
        if self.training:  # like a Gaussian readout sampling positions: train mode draws random numbers
            x = x + 0.01 * torch.randn_like(x)
        return nn.functional.elu(self.readout[data_key].module(x)) + 1


def make_problem(seed: int = 0, n_train: int = 48, n_val: int = 24, side: int = 4, sessions=("a", "b")):
    """Poisson responses of a random linear-exponential model; returns (dataloaders, n_neurons)."""
    rng = np.random.default_rng(seed)
    loaders: dict[str, dict] = {"train": {}, "validation": {}}
    n_neurons = {}
    for i, key in enumerate(sessions):
        n = 5 + i
        weights = rng.normal(0, 0.4, size=(side * side, n))
        for tier, count in (("train", n_train), ("validation", n_val)):
            images = rng.normal(size=(count, 1, side, side)).astype(np.float32)
            rates = np.exp(images.reshape(count, -1) @ weights)
            responses = rng.poisson(rates).astype(np.float32)
            dataset = ToyDataset(torch.from_numpy(images), torch.from_numpy(responses))
            loaders[tier][key] = ToyLoader(dataset, batch_size=16, shuffle=tier == "train", seed=seed + i)
        n_neurons[key] = n
    return loaders, n_neurons


FAST = dict(
    device="cpu", progress=False, verbose=False, lr_init=0.02, max_iter=12, patience=3, lr_decay_steps=2
)


def train(seed: int = 1, cb=None, resume_state=None, **config):
    loaders, n_neurons = make_problem()
    model = ToyModel(16, n_neurons)
    return standard_trainer(model, loaders, seed=seed, cb=cb, resume_state=resume_state, **{**FAST, **config})


def assert_states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_raises_the_correlation():
    score, output, state = train(max_iter=8, patience=8)
    assert output["train_loss"][-1] < output["train_loss"][0]
    assert score > output["initial_val_correlation"] + 0.2
    assert (
        len(output["train_loss"])
        == len(output["val_correlation"])
        == len(output["lr"])
        == output["epochs"]
        == 8
    )
    assert all(v.device.type == "cpu" for v in state.values())
    assert math.isclose(score, output["validation_correlation"])


def test_restore_best_returns_the_best_epochs_state():
    snapshots, model_box = {}, {}

    def cb(record):
        snapshots[record.epoch] = {k: v.clone() for k, v in model_box["model"].state_dict().items()}

    loaders, n_neurons = make_problem()
    model = model_box["model"] = ToyModel(16, n_neurons)
    # a large learning rate makes the validation correlation fluctuate, so the best epoch is not the last
    score, output, state = standard_trainer(
        model, loaders, seed=3, cb=cb, **{**FAST, "lr_init": 0.3, "max_iter": 10}
    )
    values = output["val_correlation"]
    best = output["best_epoch"]
    assert values[best - 1] == max(values)
    assert_states_equal(state, snapshots[best])
    assert score == pytest.approx(max(values), abs=1e-12)


def test_callback_sees_every_epoch_with_a_record():
    records = []
    _, output, _ = train(cb=records.append)
    assert [r.epoch for r in records] == list(range(1, output["epochs"] + 1))
    assert [r.val_correlation for r in records] == output["val_correlation"]
    assert records[-1].done and not any(r.done for r in records[:-1])
    assert all(r.lr > 0 and r.seconds >= 0 for r in records)


@pytest.mark.parametrize("how", ["return_true", "raise"])
def test_callback_stops_training_cleanly(how):
    def cb(record):
        if record.epoch == 2:
            if how == "raise":
                raise StopTraining
            return True
        return None

    score, output, _ = train(cb=cb)
    assert output["epochs"] == 2 and output["stopped_by"] == "callback"
    assert score == pytest.approx(
        max(v for v in [output["initial_val_correlation"], *output["val_correlation"]])
    )


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run_bitwise():
    checkpoint = {}

    def cb(record):
        if record.epoch == 4:
            buffer = io.BytesIO()
            torch.save(record.training_state(), buffer)  # the state must survive a save / weights-only load
            buffer.seek(0)
            checkpoint["state"] = torch.load(buffer, weights_only=True)

    # a large learning rate: after the checkpoint the run restores best states, decays the LR and
    # stops early, so all of that state must have been carried over
    config = dict(max_iter=14, patience=2, lr_decay_steps=3, lr_init=0.3)
    score_a, output_a, state_a = train(cb=cb, **config)
    assert "state" in checkpoint
    assert output_a["stopped_by"] == "early stopping" and min(output_a["lr"][4:]) < 0.3

    seen = []
    score_b, output_b, state_b = train(
        resume_state=checkpoint["state"], cb=lambda r: seen.append(r.epoch), **config
    )
    assert seen == list(range(5, output_a["epochs"] + 1))
    assert score_a == score_b
    assert_states_equal(state_a, state_b)
    for key in ("train_loss", "val_correlation", "lr", "epochs", "best_epoch", "stopped_by"):
        assert output_a[key] == output_b[key], key


def test_checkpoint_file_round_trip(tmp_path):
    states = []
    train(max_iter=2, cb=lambda r: states.append(r.training_state()))
    path = save_training_state(states[-1], tmp_path / "ckpt.pt")
    loaded = load_training_state(path)
    assert loaded["epoch"] == 2
    assert_states_equal(loaded["model"], states[-1]["model"])
    with pytest.raises(FileNotFoundError):
        load_training_state(tmp_path / "missing.pt")


def test_same_seed_gives_identical_results():
    score_a, output_a, state_a = train(seed=7, max_iter=4)
    score_b, output_b, state_b = train(seed=7, max_iter=4)
    assert score_a == score_b and output_a["train_loss"] == output_b["train_loss"]
    assert_states_equal(state_a, state_b)


def test_nan_loss_raises_a_clear_error():
    loaders, n_neurons = make_problem()
    loaders["train"]["b"].dataset.responses[3, 0] = float("nan")
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, session 'b'") as info:
        standard_trainer(ToyModel(16, n_neurons), loaders, seed=0, **FAST)
    assert isinstance(info.value, ValueError)


def test_bad_configuration_is_rejected():
    loaders, n_neurons = make_problem()
    model = ToyModel(16, n_neurons)
    with pytest.raises(ValueError, match="stop_function"):
        standard_trainer(model, loaders, seed=0, **{**FAST, "stop_function": "get_nothing"})
    with pytest.raises(ValueError, match="validation"):
        standard_trainer(model, {"train": loaders["train"]}, seed=0, **FAST)
    with pytest.raises(TypeError):
        standard_trainer(model, loaders, seed=0, **FAST, not_an_option=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            standard_trainer(model, loaders, seed=0, **{**FAST, "device": "cuda"})


def test_max_seconds_stops_after_the_first_epoch_past_the_limit():
    _, output, _ = train(max_seconds=1e-9)
    assert output["epochs"] == 1 and output["stopped_by"] == "max_seconds"


def _new_run(loaders, n_neurons, seed: int = 0) -> TrainingRun:
    model = ToyModel(16, n_neurons, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max")
    stopper = EarlyStopping(lambda m: 0.0, scheduler=scheduler, max_iter=5)
    return TrainingRun(model, optimizer, scheduler, stopper, loaders["train"], seed=seed)


def _draws(loaders) -> tuple:
    """Random numbers of every generator a training epoch uses, and the next batch order of a loader."""
    first_batch = next(iter(loaders["train"]["a"])).responses
    return random.random(), float(np.random.rand()), torch.rand(3), first_batch


def test_training_run_restores_everything_and_the_random_streams_exactly():
    loaders, n_neurons = make_problem()
    run = _new_run(loaders, n_neurons)
    run.begin()
    run.record(train_loss=1.5, val_correlation=0.25, lr=0.01, epoch_seconds=0.1)
    with torch.no_grad():
        next(run.model.parameters()).add_(1.0)
    state = run.state_dict()
    expected = _draws(loaders)

    other = _new_run(loaders, n_neurons, seed=5)  # other weights; the same loaders, already advanced
    other.load_state_dict(state)
    python_draw, numpy_draw, torch_draw, batch = _draws(loaders)
    assert python_draw == expected[0] and numpy_draw == expected[1] and torch.equal(torch_draw, expected[2])
    assert torch.equal(batch, expected[3])  # the loader shuffles as it would have after the save
    assert_states_equal(other.model.state_dict(), run.model.state_dict())
    assert other.history == run.history and other.stopper.best_epoch == run.stopper.best_epoch
    assert other.elapsed() >= state["seconds"]


def test_training_run_rejects_a_state_for_other_sessions_before_loading_anything():
    loaders, n_neurons = make_problem()
    run = _new_run(loaders, n_neurons)
    run.begin()
    state = run.state_dict()
    state["loaders"]["z"] = state["loaders"]["a"]
    other = _new_run(loaders, n_neurons, seed=5)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match="session 'z'"):
        other.load_state_dict(state)
    assert_states_equal(other.model.state_dict(), before)
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict({**state, "version": 0})


def test_long_cycler_round_robins_and_cycles_the_shorter_loader():
    cycler = LongCycler({"a": [1, 2, 3], "b": ["x"]})
    assert len(cycler) == 6
    assert list(cycler) == [("a", 1), ("b", "x"), ("a", 2), ("b", "x"), ("a", 3), ("b", "x")]
    with pytest.raises(ValueError, match="no batches"):
        LongCycler({"a": [1], "b": []})


# --------------------------------------------------------------------------------------------------
# early stopping on a scripted objective


class Scripted:
    """An objective that returns the given values in turn; the model's weight records the epoch."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, model):
        value = self.values[self.calls]
        self.calls += 1
        return value


def run_schedule(values, **kwargs):
    model = nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    objective = Scripted(values)
    stopper = EarlyStopping(objective, **kwargs)
    stopper.begin(model)
    trained = []
    for epoch in stopper.epochs():
        model.weight.data.fill_(float(epoch))  # "training" epoch e leaves weight = e
        trained.append(epoch)
        stopper.end_epoch(model)
    return stopper, model, trained


def test_early_stopping_restores_the_best_state_and_counts_rounds():
    # initial 0.1; best 0.5 at epoch 2; then 2 bad evaluations end round 1 (restore epoch 2);
    # round 2: epoch 5 improves to 0.6, then 2 bad ones end round 2 = the last round
    values = [0.1, 0.3, 0.5, 0.4, 0.45, 0.6, 0.2, 0.2, 9.0]
    stopper, model, trained = run_schedule(values, patience=2, lr_decay_steps=2, max_iter=100)
    assert trained == [1, 2, 3, 4, 5, 6, 7]
    assert stopper.best_epoch == 5 and stopper.best_objective == 0.6
    assert model.weight.item() == 5.0
    assert stopper.reason == "early stopping"


def test_early_stopping_restores_between_rounds_and_honours_interval_and_max_iter():
    restored = []
    values = [0.0, 0.5, 0.1, 0.1, 0.2]

    class Spy(Scripted):
        def __call__(self, model):
            restored.append(model.weight.item())
            return super().__call__(model)

    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(Spy(values), interval=2, patience=2, lr_decay_steps=5, max_iter=8)
    model.weight.data.fill_(0.0)
    stopper.begin(model)
    for epoch in stopper.epochs():
        model.weight.data.fill_(float(epoch))
        stopper.end_epoch(model)
    # evaluated at epochs 2, 4, 6, 8 only; round 1 ends at epoch 6 and restores epoch 2's weight,
    # so epoch 8's evaluation still sees the weight written by training epoch 8
    assert restored == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert stopper.epoch == 8 and stopper.reason == "max_iter"
    assert model.weight.item() == 2.0


def test_early_stopping_state_round_trip():
    stopper, model, _ = run_schedule([0.1, 0.2, 0.1], patience=5, max_iter=2)
    other = EarlyStopping(lambda m: 0.0, patience=5, max_iter=2)
    other.load_state_dict(stopper.state_dict())
    assert other.best_epoch == stopper.best_epoch == 1 and other.epoch == 2
    with pytest.raises(ValueError, match="lacks"):
        other.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(lambda m: 0.0, patience=0)
