"""numpy / torch booleans as betas were still read as 0.0 after booleans were refused (only Python's `bool` was)."""

import numpy as np
import pytest
import torch
from torch import nn

from hf_ext.optim import Lion, LionA, LionAR, equilibrium_angle


@pytest.mark.parametrize(
    "betas", [(np.False_, 0.9), (0.9, np.True_), (torch.tensor(False), 0.9), (np.array(False), 0.9)]
)
def test_numpy_and_torch_booleans_are_refused_by_name(betas):
    model = nn.Linear(4, 4)
    for build in (
        lambda: Lion(model.parameters(), lr=1e-3, betas=betas),
        lambda: LionA(model.parameters(), lr=1e-3, betas=betas),
        lambda: LionAR(model.parameters(), lr=1e-3, betas=betas),
        lambda: equilibrium_angle("lion", lr=1e-3, weight_decay=0.1, betas=betas),
    ):
        with pytest.raises(ValueError, match="betas.*not booleans"):
            build()


def test_numpy_and_torch_numbers_still_read():
    betas = Lion(nn.Linear(4, 4).parameters(), lr=1e-3, betas=(np.array(0.5), torch.tensor(0.25))).param_groups[0]
    assert betas["betas"] == (0.5, 0.25)
