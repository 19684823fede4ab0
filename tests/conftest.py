"""Suite-wide settings: one intra-op thread.

The models in the tests are tiny; with two threads on a two-core machine that also runs
other processes, their small matrix multiplies spend more time synchronising than computing.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
