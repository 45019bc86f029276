"""Kill tests of the mu29 mutation pass over NeuralGrok: the decoder block's residual wiring and the stability
statistics, each against an independent reference (float64 hand computation, brute force)."""

import pytest
import torch

from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM, stability_after_target


def _attention(block, x, mask):
    """Causal multi-head self-attention from the block's projection weights, by hand (float64)."""
    attn = block.attn
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t):
        return t.view(b, n, h, d // h).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-1, -2) / (d // h) ** 0.5 + mask
    out = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(b, n, d)
    return attn.out_proj(out)


@pytest.mark.parametrize("quirk", [True, False])
def test_decoder_block_residual_follows_the_reference_quirk(quirk):
    """overwrite_residual_with_norm=True (the default) is the reference code's `x = ln_1(x); x = x + attn(x)`: the
    residual stream continues from the normalised value; False is a standard pre-LN block `x + attn(ln_1(x))`."""
    torch.manual_seed(0)
    config = GrokDecoderConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               max_position_embeddings=8, overwrite_residual_with_norm=quirk)  # fmt: skip
    assert GrokDecoderConfig().overwrite_residual_with_norm is True
    model = GrokDecoderForCausalLM(config).double().eval()
    block = model.layers[0]
    x = torch.randn(2, 5, 16, dtype=torch.float64) * 3 + 1
    mask = torch.triu(torch.full((5, 5), float("-inf"), dtype=torch.float64), diagonal=1)
    with torch.no_grad():
        normed = torch.nn.functional.layer_norm(x, (16,), block.ln_1.weight, block.ln_1.bias)
        hidden = (normed if quirk else x) + _attention(block, normed, mask)
        expected = hidden + block.mlp(
            torch.nn.functional.layer_norm(hidden, (16,), block.ln_2.weight, block.ln_2.bias)
        )
        got = block(x, mask)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def _brute_force_spikes(losses, factor, floor):
    spikes, previous = 0, False
    for i, value in enumerate(losses):
        spiking = value > max(factor * min(losses[: i + 1]), floor)
        spikes += spiking and not previous
        previous = spiking
    return spikes


def test_loss_spikes_are_measured_against_the_running_minimum_since_the_target():
    """A spike is a rise above `spike_factor` times the running minimum of the loss since the target step (not the
    previous value): after a spike, a loss that stays high is still spiking, and a later rise counts again."""
    steps = list(range(1, 9))
    acc = [0.96] * 8
    losses = [0.01, 0.5, 0.09, 0.2, 0.3, 0.005, 0.04, 0.06]
    out = stability_after_target(steps, acc, steps, losses, target=0.95, spike_factor=10.0, spike_floor=0.05)
    assert out["loss_spikes"] == _brute_force_spikes(losses, 10.0, 0.05) == 3


def test_fraction_of_evaluations_below_counts_strictly_below_the_threshold():
    """`fraction_evals_below` counts the evaluations strictly below `target - drop_margin`, as `accuracy_drops` does:
    an evaluation exactly at the threshold is neither a drop nor below it."""
    steps = [1, 2, 3, 4]
    out = stability_after_target(steps, [1.0, 0.5, 0.25, 1.0], target=1.0, drop_margin=0.5)
    assert out["accuracy_drops"] == 1
    assert out["fraction_evals_below"] == pytest.approx(1 / 4)
