"""`betas=(False, 0.9)` (a switch given in the wrong place) was read as beta1 = 0.0 and trained without momentum."""

import pytest
from torch import nn

from hf_ext.optim import Lion, LionA, LionAR, equilibrium_angle, make_normalized_optimizer


@pytest.mark.parametrize("betas", [(False, 0.9), (0.9, True), [True, False]])
def test_boolean_betas_are_refused_by_name(betas):
    model = nn.Linear(4, 4)
    for build in (
        lambda: Lion(model.parameters(), lr=1e-3, betas=betas),
        lambda: LionA(model.parameters(), lr=1e-3, betas=betas),
        lambda: LionAR(model.parameters(), lr=1e-3, betas=betas),
        lambda: make_normalized_optimizer(model, "lion_ar", lr=1e-3, betas=betas),
        lambda: equilibrium_angle("lion", lr=1e-3, weight_decay=0.1, betas=betas),
    ):
        with pytest.raises(ValueError, match="betas.*not booleans"):
            build()


def test_numbers_and_strings_still_read():
    opt = Lion(nn.Linear(4, 4).parameters(), lr=1e-3, betas=("0.9", 0.99))
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert Lion(nn.Linear(4, 4).parameters(), lr=1e-3, betas=(0, 0.5)).param_groups[0]["betas"] == (0.0, 0.5)
