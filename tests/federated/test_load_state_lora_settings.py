"""FederatedSimulation.load_state refuses a round saved with other LoRA settings than the simulation's.

The exchanged LoRA factors mean `B @ A * lora_alpha / lora_r`: restoring factors saved at one scaling into a
simulation with another silently rescales the global update (with a changed lora_alpha the tensors have the same
shapes, so nothing failed), and a changed rank failed deep inside with a raw size-mismatch error.
"""

import pytest

from hf_ext.federated.simulation import META_FILE

from .conftest import tiny_simulation


def test_a_round_saved_with_another_lora_rank_is_refused_by_name(tmp_path):
    tiny_simulation(tmp_path, lora_r=4, lora_alpha=8.0).save_state(str(tmp_path / "round-0"))
    with pytest.raises(ValueError, match=r"lora_r.*4.*--lora_r 4"):
        tiny_simulation(tmp_path, lora_r=2, lora_alpha=4.0).load_state(str(tmp_path / "round-0"))


def test_a_round_saved_before_the_lora_entry_still_loads(tmp_path):
    """Rounds saved by an older hf_ext have no `lora` entry in their metadata: they load as before."""
    import json
    import os

    sim = tiny_simulation(tmp_path, lora_alpha=8.0)
    sim.save_state(str(tmp_path / "round-0"))
    meta_path = os.path.join(tmp_path, "round-0", META_FILE)
    with open(meta_path) as fh:
        meta = json.load(fh)
    assert meta.pop("lora") == {"lora_r": 4, "lora_alpha": 8.0}
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)
    tiny_simulation(tmp_path, lora_alpha=8.0).load_state(str(tmp_path / "round-0"))
