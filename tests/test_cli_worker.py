"""Worker building blocks without a database: job log lines, keys, devices, stop signals."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from sysid import worker

KEY = {
    "model_fn": "pipeline.models.stacked_core_full_gauss_readout",
    "model_hash": "f397e5c53c3cf70d7367a2f59562bedc",
    "dataset_fn": "pipeline.data.static_loaders",
    "dataset_hash": "bd85fdd88b1481114057e17145334aae",
    "trainer_fn": "pipeline.training.standard_trainer",
    "trainer_hash": "11becab12271bb5132dcfb153adbb926",
    "seed": 2,
}
SHORT = (
    "dataset=static_loaders:bd85fdd8 model=stacked_core_full_gauss_readout:f397e5c5 "
    "trainer=standard_trainer:11becab1 seed=2"
)


def test_describe_key_shortens_hashes_and_keeps_the_seed():
    assert worker.describe_key(KEY) == SHORT
    assert worker.describe_key({"dataset_fn": "a.b", "dataset_hash": "0123456789"}) == "dataset=b:01234567"


def test_job_log_handler_rewrites_datajoint_job_messages(caplog):
    target = logging.getLogger("test.jobs")
    handler = worker.JobLogHandler(target)
    table = '"sysid_pipeline"."__trained_model"'

    def emit(message):
        handler.emit(logging.LogRecord("datajoint", 15, __file__, 1, message, None, None))

    with caplog.at_level(logging.INFO, logger="test.jobs"):
        emit(f"Making {KEY!r} -> {table}")
        emit(f"Success making {KEY!r} -> {table}")
        emit(f"Making {KEY!r} -> {table}")
        emit(f"Error making {KEY!r} -> {table} - ValueError: NaN loss")
        emit(f"Error making {KEY!r} -> {table} - TrainingInterrupted: stop requested")
        emit("Populate terminated by SIGTERM")  # not a job message: ignored
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"start TrainedModel {SHORT}"
    assert messages[1].startswith(f"done  TrainedModel {SHORT} (") and messages[1].endswith(" s)")
    assert messages[3].startswith(f"FAILED TrainedModel {SHORT} after") and messages[3].endswith(
        "ValueError: NaN loss"
    )
    assert caplog.records[3].levelno == logging.ERROR
    assert messages[4].startswith("interrupted TrainedModel") and "checkpoint saved" in messages[4]
    assert len(messages) == 5


def test_table_class_name():
    assert worker.table_class_name('"p"."__neuron_score"') == "NeuronScore"
    assert worker.table_class_name("`p`.`_data_info`") == "DataInfo"


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
