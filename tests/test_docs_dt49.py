"""Numbers the docs state as facts of the code, recomputed from it (audit pass dt49).

* docs/fog.md: at the `pretrain` recipe's defaults FOG's xIELU MLP is 576 wide and FOG and `--model_type llama`
  differ by 120 parameters (vectors only);
* docs/neuralgrok.md's quick start: a+b mod 97 has 9312 rows, split into train 4656 = inner 4563 + outer 93 and test
  4656;
* docs/federated.md: the default secure-aggregation threshold is `max(2, (n + c) // 2 + 1)`.

A changed default in the code (or a number mistyped in the docs) fails here, naming the doc.
"""

from __future__ import annotations

import os
import re

import pytest


def _doc(root: str, name: str) -> str:
    with open(os.path.join(root, name), encoding="utf-8") as handle:
        return handle.read()


def _number(text: str, pattern: str) -> int:
    m = re.search(pattern, text, re.S)
    assert m, f"the docs no longer state {pattern!r}"
    return int(m.group(1).replace(",", ""))


def test_fog_md_recipe_default_widths_and_parameter_gap(repo_root):
    import torch
    from transformers import AutoModelForCausalLM

    import hf_ext  # noqa: F401
    from hf_ext.recipes.pretrain import ModelArguments, fresh_config

    text = _doc(repo_root, "docs/fog.md")
    width = _number(text, r"rounded up to a multiple of 16 \((\d+) at the default\)")
    gap = _number(text, r"xIELU scalars; (\d+) parameters at the recipe defaults")
    counts, mlp = {}, {}
    for model_type in ("fog", "llama"):
        config = fresh_config(ModelArguments(model_type=model_type), 4096, 256)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        counts[model_type] = sum(p.numel() for p in model.parameters())
        mlp[model_type] = config.intermediate_size
    assert mlp["fog"] == width
    assert abs(counts["fog"] - counts["llama"]) == gap


def test_neuralgrok_md_quick_start_sizes(repo_root):
    from hf_ext.neuralgrok import build_arithmetic_dataset, split_arithmetic_dataset

    text = _doc(repo_root, "docs/neuralgrok.md")
    rows = _number(text, r'build_arithmetic_dataset\("a\+b", p=97\)\s+# (\d+) rows')
    m = re.search(r"# splits: train \((\d+)\) = inner \((\d+)\) \+ outer \((\d+)\), test \((\d+)\)", text)
    assert m, "docs/neuralgrok.md no longer states the quick start's split sizes"
    ds = build_arithmetic_dataset("a+b", p=97)
    splits = split_arithmetic_dataset(ds, train_fraction=0.5, outer_fraction=0.02, seed=0)
    assert len(ds) == rows
    assert [len(splits[k]) for k in ("train", "inner", "outer", "test")] == [int(g) for g in m.groups()]


@pytest.mark.parametrize("n", range(0, 9))
@pytest.mark.parametrize("c", range(0, 4))
def test_federated_md_default_threshold_formula(repo_root, n, c):
    from hf_ext.federated import default_threshold

    text = _doc(repo_root, "docs/federated.md")
    assert "`fed.threshold(n)`, `max(2, (n + c) // 2 + 1)` by default" in text
    t = max(2, (n + c) // 2 + 1)
    if t > n:  # no threshold fits: refused
        with pytest.raises(ValueError):
            default_threshold(n, c)
    else:
        assert default_threshold(n, c) == t
