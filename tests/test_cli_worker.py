"""Worker building blocks without a database: job counts, devices, options, stop signals.

The worker's job log lines are tested on a real worker's output (tests/test_schemas_training.py).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from sysid import worker


def test_calls_done_counts_every_table():
    result = {
        "DataInfo": {"success_count": 0, "error_list": []},
        "TrainedModel": {"success_count": 1, "error_list": []},
        "NeuronScore": {"success_count": 0, "error_list": [("key", "boom")]},
    }
    assert worker._calls_done(result) == 2
    assert worker._calls_done({}) == 0


def test_configure_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert worker.configure_device("cpu") == "cpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(ValueError, match="invalid device 'gpu0'"):
        worker.configure_device("gpu0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(ValueError, match="lists 2 GPU"):
        worker.configure_device("cuda:2")


def test_worker_options_are_checked():
    with pytest.raises(ValueError, match="max_jobs"):
        worker.WorkerOptions(max_jobs=0)
    with pytest.raises(ValueError, match="threads"):
        worker.WorkerOptions(threads=0)


def test_stop_signal_survives_a_later_python_handler():
    # a library (DataJoint's populate) installing its own SIGTERM handler must not pre-empt the
    # worker's graceful stop: the signal is blocked and taken by the stop thread
    code = textwrap.dedent(
        """
        import os, signal, sys
        from sysid.worker import StopSignal
        received = []
        stop = StopSignal(received.append)
        signal.signal(signal.SIGTERM, lambda *a: sys.exit("library handler ran"))
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.event.wait(10), "no stop"
        print("stopped", received == [signal.SIGTERM])
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stopped True"


def test_limit_cpu_threads_in_a_fresh_process():
    code = textwrap.dedent(
        """
        import os
        from sysid.worker import limit_cpu_threads
        limit_cpu_threads(1)
        import torch
        print(torch.get_num_threads(), torch.get_num_interop_threads(), os.environ["OMP_NUM_THREADS"])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in worker.THREAD_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=120
    )
    assert out.stdout.split() == ["1", "1", "1"]
    with pytest.raises(ValueError, match="threads"):
        worker.limit_cpu_threads(0)
