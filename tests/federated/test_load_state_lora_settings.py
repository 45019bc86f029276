"""FederatedSimulation.load_state refuses a round saved with other LoRA settings than the simulation's.

The exchanged LoRA factors mean `B @ A * lora_alpha / lora_r`: restoring factors saved at one scaling into a
simulation with another silently rescales the global update (with a changed lora_alpha the tensors have the same
shapes, so nothing failed), and a changed rank failed deep inside with a raw size-mismatch error.
"""

import pytest
import torch
from datasets import Dataset

from hf_ext.federated import FederatedArguments, FederatedSimulation, PrivateTrainingArguments
from hf_ext.federated.simulation import META_FILE


def _simulation(tmp_path, **fed_overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    gen = torch.Generator().manual_seed(1)
    datasets = []
    for _ in range(2):
        ids = torch.randint(0, 32, (4, 8), generator=gen).tolist()
        datasets.append(Dataset.from_dict({"input_ids": ids, "labels": ids}))
    args = PrivateTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        learning_rate=0.05,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
    )
    fed = FederatedArguments(use_lora=True, num_rounds=1, local_steps=1, **{"lora_r": 4, **fed_overrides})
    return FederatedSimulation(LlamaForCausalLM(cfg), datasets, fed, args)


@pytest.mark.parametrize("aggregation", ["factors", "merge_then_average"])
def test_a_round_saved_with_another_lora_alpha_is_refused(tmp_path, aggregation):
    saved = _simulation(tmp_path, lora_alpha=8.0, aggregation=aggregation)
    saved.run()
    saved.save_state(str(tmp_path / "round-1"))
    with pytest.raises(ValueError, match=r"lora_alpha.*8\.0.*--lora_alpha 8\.0"):
        _simulation(tmp_path, lora_alpha=16.0, aggregation=aggregation).load_state(str(tmp_path / "round-1"))
    same = _simulation(tmp_path, lora_alpha=8.0, aggregation=aggregation)
    same.load_state(str(tmp_path / "round-1"))  # the same settings: restored
    assert same.round == 1
    for k, v in saved.global_state.items():
        assert torch.equal(same.global_state[k], v)


def test_a_round_saved_with_another_lora_rank_is_refused_by_name(tmp_path):
    _simulation(tmp_path, lora_r=4, lora_alpha=8.0).save_state(str(tmp_path / "round-0"))
    with pytest.raises(ValueError, match=r"lora_r.*4.*--lora_r 4"):
        _simulation(tmp_path, lora_r=2, lora_alpha=4.0).load_state(str(tmp_path / "round-0"))


def test_a_round_saved_before_the_lora_entry_still_loads(tmp_path):
    """Rounds saved by an older hf_ext have no `lora` entry in their metadata: they load as before."""
    import json
    import os

    sim = _simulation(tmp_path, lora_alpha=8.0)
    sim.save_state(str(tmp_path / "round-0"))
    meta_path = os.path.join(tmp_path, "round-0", META_FILE)
    with open(meta_path) as fh:
        meta = json.load(fh)
    assert meta.pop("lora") == {"lora_r": 4, "lora_alpha": 8.0}
    with open(meta_path, "w") as fh:
        json.dump(meta, fh)
    _simulation(tmp_path, lora_alpha=8.0).load_state(str(tmp_path / "round-0"))
