"""Fixtures for the influence tests: tiny peft LoRA models built from configs."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Per-example gradients of tiny models are dominated by thread start-up on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
