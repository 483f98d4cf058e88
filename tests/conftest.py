"""Shared test set-up: one thread per test process (the CI machine has two cores) and fixtures."""

import torch

torch.set_num_threads(1)

pytest_plugins = ["tests.fixtures_data", "tests.fixtures_db"]
