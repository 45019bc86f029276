"""Fix of audit ng20, F1 (NeuralGrok data): the token layout.

`build_arithmetic_dataset` claimed "the token layout of the reference code" but built an interleaved one
(`[a, op, b, =, r]`; `a*a-b` as 7 tokens with `a` twice; `a*c+b*d-e` as 11). The official code puts the operands
first, then the operators: `[a, b, op, =, r]`, `[a, b, op1, op2, =, r]`, `[a, b, c, d, e, op1, op2, op3, =, r]`.
`layout="reference"` now builds those rows, `layout="interleaved"` (still the default, with which every number in
the docs was measured) the old ones; the recipe has `--layout`, and its results record it.
"""

import json

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    arithmetic_accuracy,
    arithmetic_vocab_size,
    build_arithmetic_dataset,
    preprocess_logits_for_accuracy,
    split_arithmetic_dataset,
)
from hf_ext.recipes.neuralgrok import main as recipe_main
from hf_ext.recipes.neuralgrok import merge_results

LAYOUTS = ("interleaved", "reference")

# ---------------------------------------------------------------------------------------- F1: the reference layout


def _official_rows(task: str, p: int) -> torch.Tensor:
    """An independent construction of the official rows, following `get_dataset(task_type, p)` of the official
    NeuralGrok code (Blackzxy/NeuralOptGrok, branch `neuralgrad`, `src/dataset.py`; `neural_grok.py` on `main` builds
    the same rows): `eq_token = p`, `op_token1..3 = p + 1..3`, and per task class (`a_plus_b_mod_p_data`,
    `a_minus_b_mod_p_data`, `ab_mod_p_data`, `aa_sub_b_mod_p_data`, `ac_plus_bd_sub_e_mod_p_data`)
    `generate_data`: `torch.cartesian_prod` of the operand ranges, then `torch.stack([...])` of operands, operators,
    `eq` and the result; `__getitem__` returns the column `data[:, idx]`, i.e. the rows of `data.T`."""
    eq_token, op_token1, op_token2, op_token3 = p, p + 1, p + 2, p + 3
    if task == "a*c+b*d-e":  # ac_plus_bd_sub_e_mod_p_data
        a, b, c, d, e = torch.cartesian_prod(
            torch.arange(p), torch.arange(p), torch.arange(1, p), torch.arange(1, p), torch.arange(p)
        ).T
        eq = torch.ones_like(a) * eq_token
        op1, op2, op3 = (torch.ones_like(a) * t for t in (op_token1, op_token2, op_token3))
        result = (a * c + b * d - e) % p
        return torch.stack([a, b, c, d, e, op1, op2, op3, eq, result]).T
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(1, p)).T
    eq = torch.ones_like(a) * eq_token
    op1 = torch.ones_like(a) * op_token1
    if task == "a*a-b":  # aa_sub_b_mod_p_data
        op2 = torch.ones_like(a) * op_token2
        return torch.stack([a, b, op1, op2, eq, (a * a - b) % p]).T
    result = {"a+b": a + b, "a-b": a - b, "a*b": a * b}[task] % p  # a_plus_b / a_minus_b / ab_mod_p_data
    return torch.stack([a, b, op1, eq, result]).T


# the official get_dataset's seq_len per task (rows of the reference layout): len(task_type) + 2 for the binary tasks
OFFICIAL_SEQ_LEN = {"a+b": 5, "a-b": 5, "a*b": 5, "a*a-b": 6, "a*c+b*d-e": 10}


@pytest.mark.parametrize(("task", "p"), [("a+b", 97), ("a-b", 97), ("a*b", 97), ("a*a-b", 97), ("a*c+b*d-e", 7)])
def test_reference_layout_is_the_official_codes_rows(task, p):
    ds = build_arithmetic_dataset(task, p, layout="reference")
    ids, labels = ds[:]["input_ids"], ds[:]["labels"]
    official = _official_rows(task, p)
    assert ids.shape == official.shape and ids.shape[1] == OFFICIAL_SEQ_LEN[task]
    assert torch.equal(ids, official)  # every token id (operands, operators, `=`) and the row order
    # the answer is scored: the last position, wherever the layout puts it (index 5 for a*a-b, not 6)
    assert torch.equal(labels[:, -1], official[:, -1]) and bool((labels[:, :-1] == -100).all())
    assert int(ids.max()) < arithmetic_vocab_size(task, p)
    # the same equations in the same order as the interleaved layout, answers identical
    inter = build_arithmetic_dataset(task, p, layout="interleaved")[:]["input_ids"]
    assert torch.equal(inter[:, -1], ids[:, -1]) and len(inter) == len(ids)


def test_reference_task_aliases_build_the_same_reference_rows():
    for alias, name in (("axb", "a*b"), ("axa-b", "a*a-b")):
        assert torch.equal(
            build_arithmetic_dataset(alias, 7, layout="reference")[:]["input_ids"], _official_rows(name, 7)
        )


def test_default_layout_is_still_interleaved():
    from hf_ext.neuralgrok import ARITHMETIC_LAYOUTS

    assert ARITHMETIC_LAYOUTS == LAYOUTS
    for task, p in (("a+b", 11), ("a*a-b", 7), ("a*c+b*d-e", 3)):
        default = build_arithmetic_dataset(task, p)[:]["input_ids"]
        assert torch.equal(default, build_arithmetic_dataset(task, p, layout="interleaved")[:]["input_ids"])
        official = _official_rows(task, p)
        assert default.shape != official.shape or not torch.equal(default, official)


@pytest.mark.parametrize("layout", ["Reference", "official", "", "interleave"])
def test_unknown_layout_is_refused_naming_layout_and_the_choices(layout):
    with pytest.raises(ValueError, match=r"layout=.* choose one of \('interleaved', 'reference'\)"):
        build_arithmetic_dataset("a+b", 7, layout=layout)


@pytest.mark.parametrize("layout", [None, 1, ("reference",)])
def test_non_string_layout_is_a_type_error_naming_layout(layout):
    with pytest.raises(TypeError, match=r"layout must be a string, one of \('interleaved', 'reference'\)"):
        build_arithmetic_dataset("a+b", 7, layout=layout)


def test_reference_layout_trains_through_the_trainer_scored_on_the_answer(tmp_path):
    """a*a-b in the reference layout (6 tokens; the answer at index 5): a model with exactly 6 positions trains under
    NeuralGrok, the loss falls, and the trainer's accuracy is the official code's: argmax of the logits after the
    `=` token (the model fed the equation without its answer) against the answer."""
    p = 7
    ds = build_arithmetic_dataset("a*a-b", p, layout="reference")
    splits = split_arithmetic_dataset(ds, 0.5, 0.2, seed=0)
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(
        GrokDecoderConfig(
            vocab_size=arithmetic_vocab_size("a*a-b", p),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=6,
        )
    )
    args = NeuralGrokConfig(
        output_dir=str(tmp_path),
        gradient_transform="neuralgrok",
        max_steps=30,
        per_device_train_batch_size=8,
        outer_every=2,
        amplifier_hidden_dims=[8],
        learning_rate=1e-2,
        logging_steps=5,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        report_to="none",
    )
    trainer = NeuralGrokTrainer(
        model=model,
        args=args,
        train_dataset=splits["inner"],
        outer_dataset=splits["outer"],
        eval_dataset=splits["test"],
        compute_metrics=arithmetic_accuracy,
        preprocess_logits_for_metrics=preprocess_logits_for_accuracy,
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs[-1]["loss"] < 0.8 * logs[0]["loss"], [e["loss"] for e in logs]
    assert trainer.num_outer_steps == 15 and all(0 <= e["train_accuracy"] <= 1 for e in logs)
    model.eval()
    for split in ("test", "inner"):
        metrics = trainer.evaluate(eval_dataset=splits[split])
        ids = splits[split][:]["input_ids"]
        with torch.no_grad():
            pred = model(input_ids=ids[:, :-1]).logits[:, -1].argmax(-1)  # the official `logits[-1]` on input[:-1]
        official_accuracy = (pred == ids[:, -1]).float().mean().item()
        assert metrics["eval_accuracy"] == pytest.approx(official_accuracy), split
    # the training rows' answers are being memorised (chance: 1/7)
    assert metrics["eval_accuracy"] > 3 / p and logs[-1]["train_accuracy"] > logs[0]["train_accuracy"]


def test_recipe_layout_flag_builds_reference_rows_and_records_them(tmp_path, monkeypatch):
    import hf_ext.recipes.neuralgrok as recipe

    seq_lens = []
    build_model = recipe.build_model
    monkeypatch.setattr(recipe, "build_model", lambda m, v, n: seq_lens.append(n) or build_model(m, v, n))
    out = tmp_path / "out"
    argv = [
        "--task", "a*a-b", "--p", "7", "--layout", "reference", "--methods", "none", "--seeds", "0",
        "--max_steps", "2", "--eval_steps", "2", "--logging_steps", "2", "--hidden_size", "16",
        "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--report_to", "none",
        "--output_dir", str(out),
    ]  # fmt: skip
    results = recipe_main(argv)
    assert seq_lens == [6]  # the model was built for the reference rows (6 tokens), not the interleaved ones (7)
    saved = json.loads((out / "neuralgrok_results.json").read_text())
    assert results["layout"] == saved["layout"] == "reference"
    assert "a*a-b mod 7 (reference token layout)" in (out / "neuralgrok_results.md").read_text()
    # results of the two layouts are different settings and are not merged; results written before --layout
    # existed (no "layout" key) were all interleaved
    other = json.loads(json.dumps(saved))
    other["layout"] = "interleaved"
    legacy = json.loads(json.dumps(saved))
    del legacy["layout"]
    for part, seed in ((other, 1), (legacy, 2)):
        for res in part["methods"].values():
            for run in res["runs"]:
                run["seed"] = seed
    with pytest.raises(ValueError, match="must share"):
        merge_results([saved, other])
    with pytest.raises(ValueError, match="must share"):
        merge_results([saved, legacy])
    merged = merge_results([other, legacy])
    assert merged["layout"] == "interleaved" and merged["seeds"] == [1, 2]


def test_recipe_refuses_an_unknown_layout_before_writing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--layout='paper' is not a token layout; choose one of"):
        recipe_main(["--layout", "paper", "--methods", "none", "--output_dir", str(out), "--report_to", "none"])
    assert not out.exists() or not any(out.iterdir())


def test_reproduction_pins_the_layout_its_numbers_were_measured_with():
    from hf_ext.reproduce.methods import NEURALGROK, NEURALGROK_ARGV

    i = NEURALGROK_ARGV.index("--layout")
    assert NEURALGROK_ARGV[i + 1] == "interleaved" and "interleaved token layout" in NEURALGROK.setting
