"""Facts that docs/grape.md, docs/metadata.md, docs/compliance.md, docs/hyperinf.md, docs/evaluation.md and the
README state about the code, recomputed from it (audit pass dt51).

* the option tables of docs/grape.md (`GrapeConfig`) and docs/hyperinf.md (`InfluenceConfig`) give the dataclasses'
  defaults, row by row;
* the recipe set-ups the docs describe in prose ("2-layer Llama, hidden 64, 300 + 150 steps of 16 blocks of 64
  tokens", "r=8, alpha=16, rsLoRA, q_proj/v_proj; 4 epochs, lr 5e-3, 6% warmup", "1024 positions at the defaults")
  are the recipes' defaults;
* the constant-answer levels of docs/grape.md and the majority class of docs/evaluation.md are those of the shipped
  task items and the grape recipe's default targets;
* the embedded corpus' split sizes the README and docs/compliance.md quote;
* `MetadataCollator` keeps a batch made only of empty documents (`add_eos=False`) with every label -100, as
  docs/metadata.md says, and its docstring no longer says that such a batch raises a `ValueError` (it did since the
  rv16b change, which replaced that refusal).

A default changed in the code, or a number mistyped in the docs, fails here naming the doc.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re

import pytest


def _doc(root: str, name: str) -> str:
    with open(os.path.join(root, name), encoding="utf-8") as handle:
        return handle.read()


def _flat(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text)


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with `header`."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def _documented(value: str):
    """A table's default cell as a Python value: `text` and "text" are strings, – / None / a description is None."""
    value = value.strip()
    if value.startswith("`") and value.endswith("`"):
        value = value[1:-1]
        if value.startswith('"') and value.endswith('"'):
            return value[1:-1]
        return value
    if value in ("–", "-", "None", "dataset size"):
        return None
    if value in ("float64", "float32"):
        import torch

        return getattr(torch, value)
    return float(value)


def _same(documented, actual) -> bool:
    if isinstance(documented, float) and isinstance(actual, int | float) and not isinstance(actual, bool):
        return float(actual) == documented
    return documented == actual


def _table_defaults(text: str, header: str):
    """(option, documented default) for every row of an options table: `a`, `b` | x, y rows give one pair each."""
    for cells in _table_rows(text, header):
        names = re.findall(r"`(\w+)`", cells[0])
        values = [v for v in re.split(r",\s*", cells[1])]
        assert len(names) == len(values), f"options row {cells[:2]} pairs no default with each name"
        yield from zip(names, values)


def test_grape_md_options_table_is_grape_configs_defaults(repo_root):
    from hf_ext.grape import GrapeConfig

    fields = {f.name: f.default for f in dataclasses.fields(GrapeConfig)}
    rows = list(_table_defaults(_doc(repo_root, "docs/grape.md"), "| option | default | meaning |"))
    assert len(rows) >= 20, rows  # the extraction reads the whole table
    for name, value in rows:
        assert name in fields, f"docs/grape.md options table names {name}, not a GrapeConfig field"
        assert _same(_documented(value), fields[name]), f"docs/grape.md: {name} default {value}, code {fields[name]!r}"


def test_hyperinf_md_options_table_is_influence_configs_defaults(repo_root):
    from hf_ext.hyperinf import InfluenceConfig

    fields = {f.name: f.default for f in dataclasses.fields(InfluenceConfig)}
    rows = list(_table_defaults(_doc(repo_root, "docs/hyperinf.md"), "| option | default | meaning |"))
    assert len(rows) >= 13, rows
    for name, value in rows:
        assert name in fields, f"docs/hyperinf.md options table names {name}, not an InfluenceConfig field"
        assert _same(_documented(value), fields[name]), (
            f"docs/hyperinf.md: {name} default {value}, code {fields[name]!r}"
        )


def test_recipe_setups_the_docs_describe_are_the_defaults(repo_root):
    from hf_ext.recipes import compliance, hyperinf, metadata_pretrain
    from hf_ext.recipes.grape import GrapeModelArguments, GrapeRecipeConfig

    # docs/compliance.md: "2-layer Llama, hidden 64, 300 + 150 steps of 16 blocks of 64 tokens"
    text = _flat(_doc(repo_root, "docs/compliance.md"))
    assert "(2-layer Llama, hidden 64, 300 + 150 steps of 16 blocks of 64 tokens;" in text
    c = compliance.ComplianceArguments()
    assert (c.model_layers, c.model_hidden_size, c.train_steps, c.continual_steps) == (2, 64, 300, 150)
    assert (c.train_batch_size, c.train_block_size) == (16, 64)
    # docs/hyperinf.md, the mislabeled-detection recipe
    text = _flat(_doc(repo_root, "docs/hyperinf.md"))
    for quoted in (
        "from its first 47 tokens plus `<|eos|>`",
        "20% of the training labels are flipped",
        "A tiny Llama (hidden 64, 2 layers) is pretrained as a causal LM on the corpus (600 steps)",
        "(r=8, alpha=16, rsLoRA, q_proj/v_proj, no dropout; 4 epochs, lr 5e-3, 6% warmup)",
        "retrained on the 80% lowest-influence examples",
        "split into 80 clean validation (they define the influence target), 40 clean test",
    ):
        assert quoted in text, quoted
    task, model = hyperinf.TaskArguments(), hyperinf.ModelArguments()
    influence = hyperinf.InfluenceArguments()
    fields = {f.name: f.default for f in dataclasses.fields(hyperinf.HyperInfTrainingArguments)}
    assert (task.max_length, task.noise_rate, task.num_val, task.num_test) == (48, 0.2, 80, 40)
    assert (model.hidden_size, model.num_hidden_layers, model.pretrain_steps) == (64, 2, 600)
    assert (model.lora_r, model.lora_alpha, model.use_rslora, model.target_modules) == (8, 16.0, True, "q_proj,v_proj")
    assert influence.select_fraction == 0.8
    # docs/hyperinf.md, --task llm_selection: "`--prompt_tokens 24` document tokens", "the excerpt's first
    # `--answer_tokens 6` tokens", the 512-token tokenizer, "`--select_fractions 0.2,0.5` is the default"
    for quoted in (
        "`--prompt_tokens 24` document tokens in the prompt",
        "the excerpt's first `--answer_tokens 6` tokens",
        "all nine corpus domains, the 512-token tokenizer",
        "(`--select_fractions 0.2,0.5` is the default;",
    ):
        assert quoted in text, quoted
    assert (task.prompt_tokens, task.answer_tokens, task.instruction_kinds) == (24, 6, "topic,repeat")
    assert (task.vocab_size, influence.select_fractions) == (512, "0.2,0.5")
    assert (fields["num_train_epochs"], fields["learning_rate"], fields["warmup_steps"]) == (4.0, 5e-3, 0.06)
    # docs/metadata.md: template url, dropout 0.1, 10% cooldown; 4 * max(--block_size, 256) positions, 1024 at the
    # defaults; --eval_fewshot 0,5 and --eval_metric acc by default
    text = _flat(_doc(repo_root, "docs/metadata.md"))
    assert "one with URL context (template `url`, dropout 0.1, 10% cooldown)" in text
    assert "`4 * max(--block_size, 256)` positions, 1024 at the defaults" in text
    meta = metadata_pretrain.MetadataArguments()
    data = metadata_pretrain.MetadataDataArguments()
    assert (meta.template, meta.layout, meta.metadata_dropout, meta.cooldown_fraction) == ("url", "context", 0.1, 0.1)
    assert (meta.eval_fewshot, meta.eval_metric) == ("0,5", "acc")
    assert 4 * max(data.block_size, 256) == 1024
    # docs/grape.md: "tiny Llama, hidden 64, 2 layers, 200 steps of 16 x 64 tokens, updates every 20 steps"
    text = _flat(_doc(repo_root, "docs/grape.md"))
    assert "(tiny Llama, hidden 64, 2 layers, 200 steps of 16 x 64 tokens, updates every 20 steps;" in text
    fields = {f.name: f.default for f in dataclasses.fields(GrapeRecipeConfig)}
    grape_model = GrapeModelArguments()
    assert (grape_model.hidden_size, grape_model.num_hidden_layers) == (64, 2)
    assert (fields["max_steps"], fields["per_device_train_batch_size"], fields["block_size"]) == (200, 16, 64)
    assert (fields["reweight_domains_every"], fields["reweight_tasks_every"], fields["seed"]) == (20, 20, 42)


def _task_items(name: str) -> list[dict]:
    from hf_ext.evaluation import task_dir

    with open(os.path.join(task_dir(), "data", f"{name}.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_grape_md_constant_answer_levels_are_the_shipped_items(repo_root):
    from hf_ext.recipes.grape import DEFAULT_TARGETS

    text = _flat(_doc(repo_root, "docs/grape.md"))
    assert (
        "the `io_network` target has 25 passages (22 networking, 3 filesystem) and `language_numeric` 30 (21 language, "
        '6 numeric, 3 datatypes), so "always *files*" scores 0.12 and "always *networking*" 0.88 on `io_network`, and '
        '"always *language reference*" 0.70 on `language_numeric`' in text
    )
    assert "(25 for `io_network`, 30 for `language_numeric`; `all` = 102 domain / 97 cloze items)" in text
    counts = collections.Counter(item["domain"] for item in _task_items("hf_ext_domain_test"))
    targets = dict(part.split("=") for part in DEFAULT_TARGETS.split(","))
    assert targets == {"io_network": "networking+filesystem", "language_numeric": "language+numeric+datatypes"}
    io = {d: counts[d] for d in targets["io_network"].split("+")}
    ln = {d: counts[d] for d in targets["language_numeric"].split("+")}
    assert io == {"networking": 22, "filesystem": 3}
    assert ln == {"language": 21, "numeric": 6, "datatypes": 3}
    assert round(3 / 25, 2) == 0.12 and round(22 / 25, 2) == 0.88 and round(21 / 30, 2) == 0.70
    assert sum(counts.values()) == 102 and len(_task_items("hf_ext_cloze_test")) == 97


def test_evaluation_md_task_table_is_the_shipped_items(repo_root):
    text = _flat(_doc(repo_root, "docs/evaluation.md"))
    assert "| 102 test, 36 few-shot (4 per domain) |" in text
    assert "| majority class 27/102 = 0.265, uniform 1/9 |" in text
    assert "| 97 test, 32 few-shot |" in text
    test_counts = collections.Counter(item["domain"] for item in _task_items("hf_ext_domain_test"))
    shots = collections.Counter(item["domain"] for item in _task_items("hf_ext_domain_train"))
    assert sum(test_counts.values()) == 102 and max(test_counts.values()) == 27 and len(test_counts) == 9
    assert set(shots.values()) == {4} and len(shots) == 9
    assert len(_task_items("hf_ext_cloze_test")) == 97 and len(_task_items("hf_ext_cloze_train")) == 32


def test_corpus_split_sizes_quoted_in_readme_and_compliance_md(repo_root, corpus, corpus_test):
    readme = _flat(_doc(repo_root, "README.md"))
    assert "(chosen by URL hash: 37 of 897 documents;" in readme
    compliance = _flat(_doc(repo_root, "docs/compliance.md"))
    assert "Result on the embedded corpus (train split, 860 documents," in compliance
    assert "the `language` test split has 4 documents" in compliance
    assert "its 74 documents are the longest in the corpus" in compliance
    assert (len(corpus), len(corpus_test), len(corpus) + len(corpus_test)) == (860, 37, 897)
    assert collections.Counter(corpus_test["domain"])["language"] == 4
    assert collections.Counter(corpus["domain"])["language"] == 74


@pytest.mark.parametrize("block_size", [None, 16])
def test_metadata_collator_keeps_a_batch_of_only_empty_documents(repo_root, tokenizer, block_size):
    """docs/metadata.md: with `add_eos=False` "a batch made only of such documents (e.g. batch size 1) keeps them,
    with every label -100". The collator's docstring said such a batch raises a `ValueError`."""
    import copy

    from hf_ext.metadata import MetadataCollator, add_context_tokens, metadata_template

    text = _flat(_doc(repo_root, "docs/metadata.md"))
    assert "A batch made only of such documents (e.g. batch size 1) keeps them, with every label -100" in text
    tok = copy.deepcopy(tokenizer)
    add_context_tokens(tok)
    collator = MetadataCollator(
        tok, metadata_template("url"), add_eos=False, block_size=block_size, metadata_dropout=0.0
    )
    batch = collator([{"text": "", "url": "https://a.org/x"}])
    assert batch["input_ids"].shape[0] == 1
    assert (batch["labels"] == -100).all()
    assert collator.empty_documents == 1
    doc = _flat(MetadataCollator.__doc__)
    add_eos = doc[doc.index("add_eos (") : doc.index("max_metadata_tokens (")]
    assert "raises" not in add_eos, add_eos
    assert "A batch of only such documents keeps them" in add_eos
