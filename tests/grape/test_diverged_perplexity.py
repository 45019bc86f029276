"""A diverged GRAPE run (held-out target loss above ~709) overflowed `math.exp` while computing its perplexity, after
training and before `grape_results.json` was written, so the run's results were lost; its perplexity is now `inf`
(written as the strict-JSON string "Infinity") and the comparison table shows "–"."""

from __future__ import annotations

import json

import hf_ext.utils.evaluation as evaluation
from hf_ext.recipes.grape import comparison_table, main

from .test_recipe_eval import TINY


def test_diverged_target_loss_still_writes_the_results(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "causal_lm_eval_loss", lambda *args, **kwargs: 800.0)
    out = tmp_path / "run"
    main(TINY + ["--max_steps", "1", "--output_dir", str(out)])
    saved = json.loads((out / "grape_results.json").read_text())
    assert set(saved["target_eval_loss"].values()) == {800.0}
    assert set(saved["target_eval_perplexity"].values()) == {"Infinity"}


def test_comparison_table_of_a_diverged_loss():
    table = comparison_table({"grape": {"target_eval_loss": {"t": 800.0}}, "uniform": {"target_eval_loss": {"t": 2.0}}},
                             ["t"])  # fmt: skip
    rows = [line for line in table.splitlines() if line.startswith("| grape") or line.startswith("| uniform")]
    assert rows[0].split("|")[3].strip() == "–" and rows[1].split("|")[3].strip() == "7.389"
