"""pipeline.training.cpu_memory: freed large blocks are reused (no fresh page faults), results unchanged."""

from __future__ import annotations

import resource

import pytest
import torch

from pipeline.training.cpu_memory import _mallopt, reuse_freed_memory
from tests.test_trainer import assert_states_equal, train

glibc_only = pytest.mark.skipif(_mallopt() is None, reason="needs glibc's mallopt (Linux)")


def _faults_of_second_allocation() -> int:
    """Minor page faults of allocating and filling 64 MiB right after freeing a block of that size."""
    torch.empty(16 * 2**20).fill_(1.0)  # allocated, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_freed_blocks_are_reused_inside_and_returned_outside():
    pages = 64 * 2**20 // resource.getpagesize()
    assert _faults_of_second_allocation() > pages // 2  # glibc's default: a fresh mmap every time
    with reuse_freed_memory() as active:
        assert active
        for _ in range(3):  # the first rounds grow the heap (small blocks may land between)
            _faults_of_second_allocation()
        assert min(_faults_of_second_allocation() for _ in range(3)) < pages // 20
        with reuse_freed_memory():  # nesting keeps the outer setting
            pass
        assert min(_faults_of_second_allocation() for _ in range(3)) < pages // 20
    assert _faults_of_second_allocation() > pages // 2  # defaults restored


def test_disabled_is_a_no_op():
    with reuse_freed_memory(enabled=False) as active:
        assert not active


def test_training_results_are_identical_with_and_without():
    score_a, out_a, state_a = train(reuse_cpu_memory=True)
    score_b, out_b, state_b = train(reuse_cpu_memory=False)
    assert score_a == score_b
    assert out_a["train_loss"] == out_b["train_loss"] and out_a["val_correlation"] == out_b["val_correlation"]
    assert_states_equal(state_a, state_b)
