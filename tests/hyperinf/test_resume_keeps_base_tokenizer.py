"""Resuming the HyperINF recipe keeps the tokenizer of the base model the interrupted run pretrained.

With another `--vocab_size` the resumed run built a fresh BPE and fed its ids to the saved base (same text, other
ids): it finished with exit 0 and influence scores up to 2.0 apart from the uninterrupted run's. Now that is refused
before anything runs, and a resumed run reads `<output_dir>/base`'s own tokenizer.
"""

import json

import pytest
from transformers import TrainingArguments

from hf_ext.data import build_tokenizer
from hf_ext.recipes.hyperinf import main, run_tokenizer

from .test_recipe_audit import TINY


def _interrupted_run(out, vocab_size):
    (out / "base").mkdir(parents=True)
    (out / "base" / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": vocab_size}))
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text("{}")


def test_resuming_with_another_vocab_size_is_refused_before_anything_runs(tmp_path):
    out = tmp_path / "run"
    _interrupted_run(out, 512)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"--vocab_size 300: .*512-token tokenizer.*--vocab_size 512"):
        main([*TINY, "--output_dir", str(out), "--resume_from_checkpoint", "true", "--vocab_size", "300"])
    assert sorted(p.name for p in out.rglob("*")) == before


def test_a_resumed_run_reads_the_saved_bases_tokenizer(tmp_path):
    out = tmp_path / "run"
    saved = build_tokenizer(300)
    saved.save_pretrained(out / "base")
    resumed = TrainingArguments(str(out), resume_from_checkpoint=str(out / "checkpoint-3"), report_to="none")
    assert run_tokenizer(None, 300, resumed).get_vocab() == saved.get_vocab()
    fresh = TrainingArguments(str(tmp_path / "fresh"), report_to="none")
    assert len(run_tokenizer(None, 280, fresh)) == 280  # a fresh run builds the embedded BPE of --vocab_size
