"""Slow reproduction: with replicated canaries under FedAvg, LoRA memorizes less than full fine-tuning and the
Goldfish loss lowers memorization further (tiny Llama, embedded corpus, 3 clients)."""

import os

import pytest


def _score(history, rep=10):
    """Memorization of the `rep`x canaries: exact + approximate rate + mean char-BLEU, max over rounds."""
    return max(h[f"exact_{rep}x"] + h[f"approx_{rep}x"] + h[f"bleu_{rep}x"] for h in history[1:])


@pytest.mark.slow
def test_lora_memorizes_less_than_full_and_goldfish_reduces_it(tmp_path):
    from hf_ext.recipes.federated import main

    res = main(["--output_dir", str(tmp_path), "--configs", "full,full+goldfish,lora,lora+goldfish"])
    runs = {name: _score(r["history"]) for name, r in res["runs"].items()}
    print({k: round(v, 3) for k, v in runs.items()})
    assert runs["full"] > 0.2  # full fine-tuning does memorize the 10x canaries
    assert runs["lora"] < runs["full"] - 0.1
    assert runs["lora+goldfish"] <= runs["lora"] + 0.02
    assert runs["full+goldfish"] < runs["full"] - 0.05
    for name in ("results.json", "memorization_table.md", "memorization_vs_rounds.png"):
        assert os.path.getsize(tmp_path / name) > 0
