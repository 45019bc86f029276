"""Slow reproduction: with replicated canaries under FedAvg, LoRA memorizes less than full fine-tuning and the
Goldfish loss lowers memorization further, for both (tiny Llama, embedded corpus, 3 clients)."""

import os

import pytest

# LoRA on every linear layer including the output projection (lm_head): with the attention/MLP layers alone the
# tiny model's LoRA memorizes nothing measurable, so "Goldfish reduces LoRA memorization" could not be observed.
LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head"


def _score(history, rep=10):
    """Memorization of the `rep`x canaries: exact + approximate rate + mean char-BLEU, max over rounds."""
    return max(h[f"exact_{rep}x"] + h[f"approx_{rep}x"] + h[f"bleu_{rep}x"] for h in history[1:])


@pytest.mark.slow
def test_lora_memorizes_less_than_full_and_goldfish_reduces_it(tmp_path):
    from hf_ext.recipes.federated import main

    res = main(
        [
            "--output_dir",
            str(tmp_path),
            "--configs",
            "full,full+goldfish,lora,lora+goldfish",
            "--lora_learning_rate",
            "3e-3",
            "--lora_target_modules",
            LORA_TARGETS,
        ]
    )
    runs = {name: _score(r["history"]) for name, r in res["runs"].items()}
    print({k: round(v, 3) for k, v in runs.items()})
    assert runs["full"] > 0.2  # full fine-tuning does memorize the 10x canaries
    assert runs["full+goldfish"] < runs["full"] - 0.05
    assert runs["lora"] > 0.2  # LoRA memorizes too, measurably ...
    assert runs["lora"] < runs["full"] - 0.2  # ... but clearly less than full fine-tuning
    assert runs["lora+goldfish"] < runs["lora"] - 0.1  # and Goldfish lowers LoRA's memorization further
    for name in ("results.json", "memorization_table.md", "memorization_vs_rounds.png"):
        assert os.path.getsize(tmp_path / name) > 0
