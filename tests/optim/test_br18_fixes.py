"""Bad-input audit br18, optim: `angular_update` refuses a `neuron_dim` the optimizers refuse."""

import pytest
import torch

from hf_ext.optim import angular_update


@pytest.mark.parametrize("neuron_dim", [-1, 2, "1", None, 1.0000001, True, 1.0])
def test_angular_update_neuron_dim_must_be_0_or_1(neuron_dim):
    """-1, 2, "1", None and 1.0000001 used to return the row angles (as 0) with no error."""
    old, new = torch.randn(4, 6), torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"`neuron_dim` of angular_update must be 0 \(rows are neurons"):
        angular_update(old, new, neuron_dim)


def test_angular_update_columns_need_a_2d_weight():
    """A 3D tensor with neuron_dim=1 failed inside `Tensor.t()` without naming the argument."""
    with pytest.raises(ValueError, match="`neuron_dim=1`.*only supported for 2D weights"):
        angular_update(torch.randn(2, 3, 4), torch.randn(2, 3, 4), neuron_dim=1)


def test_angular_update_valid_layouts_unchanged():
    old, new = torch.randn(4, 6), torch.randn(4, 6)
    assert angular_update(old, new, 0).shape == (4,)
    assert angular_update(old, new, 1).shape == (6,)
    assert torch.equal(angular_update(old, new, 1), angular_update(old.t(), new.t(), 0))
