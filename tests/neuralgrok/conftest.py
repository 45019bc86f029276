"""One intra-op thread for these tests: the tiny matmuls of the amplifier slow down badly when BLAS threads fight
over shared cores. The previous setting is restored afterwards."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
