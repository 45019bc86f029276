"""Fixtures for the federated tests: a tiny Llama built from config and three small non-IID clients."""

import pytest
import torch


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation("eager")
    return model


def tiny_simulation(tmp_path, dtype=torch.float32, num_clients: int = 2, **fed_overrides):
    """A `FederatedSimulation` of a 1-layer Llama (vocab 32, width 16, `dtype`) over `num_clients` clients of 4 random rows
    of 8 tokens: LoRA rank 4, one round of one local step unless `fed_overrides` say otherwise."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.federated import FederatedArguments, FederatedSimulation, PrivateTrainingArguments

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
    for _ in range(num_clients):
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
    fed = FederatedArguments(**{"use_lora": True, "num_rounds": 1, "local_steps": 1, "lora_r": 4, **fed_overrides})
    return FederatedSimulation(LlamaForCausalLM(cfg).to(dtype), datasets, fed, args)


def tiny_recipe_args(**overrides) -> list[str]:
    """Flags for a tiny run of the federated recipe (one-layer model, two clients, two canaries, no pretraining).
    Keyword arguments override a flag or add one (`local_steps=2` gives `--local_steps 2`); `None` leaves it out."""
    flags = dict(
        num_rounds=1, local_steps=1, pretrain_steps=0, num_canaries=2, replication="2:1.0", prefix_lengths=5, window=19,
        max_eval_blocks=2, num_clients=2, block_size=32, vocab_size=300, torch_threads=1, num_hidden_layers=1,
        hidden_size=16, intermediate_size=32, num_attention_heads=2,
    )  # fmt: skip
    flags.update(overrides)
    return [item for key, value in flags.items() if value is not None for item in (f"--{key}", str(value))]


@pytest.fixture(scope="module")
def client_datasets(corpus, small_tokenizer):
    from hf_ext.federated import build_client_dataset, split_by_column

    parts = split_by_column(corpus, "domain", 3)
    return [build_client_dataset(p.select(range(6)), [], small_tokenizer, 32) for p in parts]


@pytest.fixture
def training_args(tmp_path):
    from hf_ext.federated import PrivateTrainingArguments

    return PrivateTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        use_cpu=True,
        seed=3,
    )
