"""evaluate_with_prefix puts the prefix in front of a task's own lm-eval `description` (ev33 F1): it replaced it, so
a task with a description (mmlu's "The following are multiple choice questions ...") lost it in every prompt, also
with `prefix=""`."""

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation import evaluate_with_prefix  # noqa: E402

TASK = """task: described_cloze
custom_dataset: !function utils.load_cloze
output_type: loglikelihood
training_split: train
fewshot_split: train
test_split: test
description: "Complete the passage about {{host}}.\\n\\n"
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_prefix_goes_before_the_tasks_own_description(small_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    (tmp_path / "described_cloze.yaml").write_text(TASK)
    (tmp_path / "utils.py").write_text("from hf_ext.evaluation.tasks.utils import load_cloze  # noqa: F401\n")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(small_tokenizer), max_position_embeddings=512, hidden_size=16,
                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    common = dict(tasks=["described_cloze"], num_fewshot=0, limit=1, include_path=str(tmp_path), log_samples=True,
                  bootstrap_iters=0)  # fmt: skip

    def prompt(res):
        return res["samples"]["described_cloze"][0]["arguments"][0][0]

    plain = prompt(evaluate_with_prefix(model, small_tokenizer, prefix="", **common))
    assert plain.startswith("Complete the passage about ") and ".docs.python.org.\n\n" in plain
    host = plain[len("Complete the passage about ") : plain.index(".\n\n")]
    with_url = prompt(evaluate_with_prefix(model, small_tokenizer, prefix="URL: {{host}}\n\n", **common))
    assert with_url == f"URL: {host}\n\n" + plain
