"""mu42: a test that kills a mutant of pass 36's meta-optimizer check which its own tests let survive: only the
amplifier's trainable parameters must be in the meta-optimizer (a frozen one, e.g. a fixed layer, need not be)."""

from types import SimpleNamespace

import torch
from torch import nn

from hf_ext.neuralgrok import NeuralAmplifier, amplifier_outer_step


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x, labels):
        return SimpleNamespace(loss=nn.functional.cross_entropy(self.linear(x), labels))


def test_a_frozen_amplifier_parameter_need_not_be_in_the_meta_optimizer():
    torch.manual_seed(0)
    model, amplifier = _Model(), NeuralAmplifier((4,))
    batch = {"x": torch.randn(4, 3), "labels": torch.tensor([0, 1, 2, 3])}
    params = list(amplifier.parameters())
    params[0].requires_grad_(False)  # frozen: the meta step never moves it
    trainable = [p for p in params if p.requires_grad]
    assert trainable and len(trainable) < len(params)
    before = [p.detach().clone() for p in params]
    meta = torch.optim.Adam(trainable, lr=1e-2)
    amplifier_outer_step(amplifier, meta, model, [batch], [batch], virtual_lr=0.1)
    assert torch.equal(params[0], before[0])
    assert any(not torch.equal(p, b) for p, b in zip(params[1:], before[1:]))
