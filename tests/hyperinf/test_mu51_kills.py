"""Mutation-kill tests (audit pass 41, mu51) for hf_ext/hyperinf/selection.py."""

import pytest
import torch

from .test_hi41_fixes import _tiny_causal_lm


def test_evaluate_response_loss_matches_a_per_example_loop_over_the_response_tokens():
    """`example_loss` is the mean over examples of each one's loss per response token (prompt and padding excluded),
    `loss` the mean over all response tokens, `token_accuracy` the share of response tokens predicted exactly; the
    examples differ in length and prompt length, so a padded batch of them is checked against each example alone."""
    from hf_ext.hyperinf.selection import evaluate_response_loss

    model = _tiny_causal_lm()
    data = [
        {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8], "labels": [-100] * 5 + [6, 7, 8]},
        {"input_ids": [9, 10, 11, 12], "labels": [-100, 10, 11, 12]},
        {"input_ids": [13, 14, 15, 16, 17, 18], "labels": [-100] * 4 + [17, 18]},
    ]
    total, correct, count, per_example = 0.0, 0, 0, []
    with torch.no_grad():
        for ex in data:
            logits = model(input_ids=torch.tensor([ex["input_ids"]])).logits[0, :-1].double()
            target = torch.tensor(ex["labels"][1:])
            mask = target != -100
            losses = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="none")
            total += float(losses.sum())
            correct += int((logits[mask].argmax(-1) == target[mask]).sum())
            count += int(mask.sum())
            per_example.append(float(losses.mean()))
    got = evaluate_response_loss(model, data, batch_size=3)
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(correct / count)
    assert got["example_loss"] == pytest.approx(sum(per_example) / len(per_example), rel=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_example_has_the_gradient_of_its_real_tokens_alone(randomize_lora_b, side):
    """Stored padding (attention mask 0) is cut before differentiation: a padded example's per-example gradient is
    the gradient of its real tokens, the last one included (left padding puts it at the row's end)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.hyperinf import PerExampleGradients, tracked_lora_parameters

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        pad_token_id=0,
    )  # fmt: skip
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    randomize_lora_b(model)
    model = model.double()
    real = [5, 6, 7, 8, 9]
    pad = [0, 0, 0]
    alone = {"input_ids": real, "attention_mask": [1] * 5, "labels": real}
    if side == "left":
        padded = {"input_ids": pad + real, "attention_mask": [0] * 3 + [1] * 5, "labels": [-100] * 3 + real}
    else:
        padded = {"input_ids": real + pad, "attention_mask": [1] * 5 + [0] * 3, "labels": real + [-100] * 3}
    tracked = tracked_lora_parameters(model)
    per_example = PerExampleGradients(model, tracked, batch_size=1, method="loop", dtype=torch.float64)
    want = next(per_example.iterate([alone]))
    got = next(per_example.iterate([padded]))
    for name, value in want.items():
        assert value.abs().max() > 0
        torch.testing.assert_close(got[name], value)


def test_every_chosen_example_of_a_kind_with_distinct_answers_is_corrupted():
    """`corrupt_rate` is the share of training examples whose response is swapped: the chosen examples' answers are
    cyclically shifted among themselves by 1..len-1 places, so none keeps its own. With `continue` answers (all
    distinct here) exactly `round(corrupt_rate * len(train))` examples are corrupted on every seed; a shift of 0
    (seed 6 draws it when 0 is allowed) left all of them clean."""
    from hf_ext.data import build_tokenizer
    from hf_ext.hyperinf.selection import build_instruction_task

    tokenizer = build_tokenizer(512)
    for seed in range(8):
        train, *_ = build_instruction_task(
            tokenizer, seed=seed, prompt_tokens=8, answer_tokens=4, num_target=4, num_test=4, max_train=20,
            corrupt_rate=0.3, kinds=("continue",),
        )  # fmt: skip
        answers = [tuple(labels[-5:]) for labels in train["labels"]]
        assert len(set(answers)) == len(train) == 20, seed
        assert sum(train["corrupted"]) == round(0.3 * len(train)), seed
