"""Shared test set-up: one thread per test process (the CI machine has two cores) and fixtures."""

import os

import torch

# the tests register functions of tests.toy_fns, tests.test_register ...: allow them the way a lab
# allows its own modules (inherited by the worker and CLI subprocesses the tests start)
os.environ["SYSID_ALLOWED_FN_PREFIXES"] = "tests"

torch.set_num_threads(1)

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_db"]
