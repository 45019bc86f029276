"""Audit ng38 fixes."""

import pytest
import torch
from torch import nn

from hf_ext.neuralgrok import NeuralAmplifier, amplifier_outer_step


@pytest.mark.parametrize("size", [12, 200])  # the direct MLP and the piecewise-linear fast path
def test_an_all_zero_gradient_tensor_gives_a_finite_amplifier_gradient(size):
    """An all-zero gradient tensor (a LoRA A while its B is still 0) transforms to 0; its norm's sqrt at 0 used to
    send NaN into every amplifier gradient (inf * 0), so the meta step turned the amplifier, then the model, to NaN."""
    torch.manual_seed(0)
    amp = NeuralAmplifier((8,))
    out = amp.transform_many([torch.zeros(size), torch.randn(size)])
    assert torch.equal(out[0], torch.zeros(size))
    (out[0].sum() + out[1].pow(3).sum()).backward()
    for phi in amp.parameters():
        assert torch.isfinite(phi.grad).all()
    assert any(bool(phi.grad.abs().sum() > 0) for phi in amp.parameters())


class _ZeroInitLoRA(nn.Module):
    """y = W x + B A x with B = 0: A's gradient is exactly 0."""

    def __init__(self):
        super().__init__()
        self.w = nn.Linear(4, 3)
        self.a = nn.Linear(4, 2, bias=False)
        self.b = nn.Linear(2, 3, bias=False)
        nn.init.zeros_(self.b.weight)

    def forward(self, x, labels):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.w(x) + self.b(self.a(x))
        return SequenceClassifierOutput(loss=nn.functional.cross_entropy(logits, labels), logits=logits)


def test_outer_step_with_a_zero_gradient_parameter_keeps_the_amplifier_finite():
    torch.manual_seed(0)
    model, amp = _ZeroInitLoRA(), NeuralAmplifier((8,))
    meta = torch.optim.Adam(amp.parameters(), lr=1e-2)
    batch = {"x": torch.randn(16, 4), "labels": torch.randint(0, 3, (16,))}
    before = {k: v.clone() for k, v in amp.state_dict().items()}
    loss = amplifier_outer_step(amp, meta, model, [batch], [batch], virtual_lr=1e-2)
    assert torch.isfinite(torch.tensor(loss))
    for name, value in amp.state_dict().items():
        assert torch.isfinite(value).all(), name
        assert not torch.equal(value, before[name]), name


def test_a_streamed_outer_dataset_is_refused_by_name(tiny_amplified_trainer, tmp_path):
    from hf_ext.neuralgrok import build_arithmetic_dataset, split_arithmetic_dataset

    outer = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)["outer"]
    trainer = tiny_amplified_trainer(tmp_path)
    with pytest.raises(TypeError, match="outer_dataset must be a map-style dataset.*IterableDataset"):
        type(trainer)(
            model=trainer.model,
            args=trainer.args,
            train_dataset=trainer.train_dataset,
            outer_dataset=outer.to_iterable_dataset(),
        )
