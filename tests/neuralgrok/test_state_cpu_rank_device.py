"""NeuralGrok's checkpointed state (amplifier, meta-optimizer, transform) loads on a CPU rank under torchrun, whose
`args.device` is `cpu:0`: safetensors refuses that name, so every 2-rank CPU resume crashed
("device cpu:0 is invalid")."""

import torch

from hf_ext.neuralgrok.state import load_state, save_state


def test_state_loads_onto_an_indexed_cpu_device(tmp_path):
    state = {"ema": [torch.arange(4.0), torch.ones(2, 3)], "step": 7}
    save_state(state, str(tmp_path / "transform"))
    for device in (torch.device("cpu", 0), "cpu:0", torch.device("cpu"), None):
        loaded = load_state(str(tmp_path / "transform"), device=device)
        assert loaded["step"] == 7 and all(torch.equal(a, b) for a, b in zip(loaded["ema"], state["ema"], strict=True))
