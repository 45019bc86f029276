"""The grape recipe: runs on the embedded corpus, prints weights, exports a mixture usable for a fixed second stage."""

from __future__ import annotations

import json

import pytest
from grape_synthetic import without_reweighting

from hf_ext.recipes.grape import main

TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
    "--reweight_mini_batch_size", "2", "--reweight_domains_every", "2", "--reweight_tasks_every", "2",
    "--source_domains", "text,numeric,networking,filesystem", "--disable_tqdm", "true", "--use_cpu", "true",
]  # fmt: skip


def test_recipe_two_stage(tmp_path, capsys):
    out = tmp_path / "stage1"
    metrics = main(TINY + ["--max_steps", "4", "--output_dir", str(out)])
    printed = capsys.readouterr().out
    assert "final domain weights" in printed and "final task weights" in printed
    assert set(metrics["task_weights"]) == {"io_network", "language_numeric"}
    assert set(metrics["domain_weights"]) == {"text", "numeric", "networking", "filesystem"}
    assert (out / "mixture_weights.png").is_file() and (out / "model.safetensors").is_file()
    saved = json.loads((out / "grape_results.json").read_text())
    assert set(saved["target_eval_loss"]) == {"io_network", "language_numeric"}
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["domain_updates"] == 2

    stage2 = main(  # the fixed stage reads no reweighting cadence or batch
        without_reweighting(TINY)
        + ["--max_steps", "2", "--output_dir", str(tmp_path / "stage2"), "--reweight_method", "fixed"]
        + ["--mixture_file", str(out / "mixture.json")]
    )
    assert stage2["domain_weights"] == pytest.approx(mixture["domains"])


def test_recipe_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--target_domains task 'x' names unknown domains"):
        main(TINY + ["--target_domains", "x=nope", "--output_dir", str(tmp_path / "a")])
    sources = tmp_path / "sources.jsonl"
    sources.write_text('{"text": "some text", "domain": "d"}\n')
    with pytest.raises(ValueError, match="--target_files"):
        main(TINY + ["--train_file", str(sources), "--output_dir", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="--eval_fraction"):
        main(TINY + ["--eval_fraction", "1.5", "--output_dir", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="reweight_method"):
        main(TINY + ["--reweight_method", "regmix", "--output_dir", str(tmp_path / "d")])
    assert not (tmp_path / "a" / "mixture.json").exists()


@pytest.mark.parametrize(
    "domains, message",
    [
        ("web,code,mtah", r"--source_domains has unknown domains \['mtah'\]; the sources have \['code', 'web'\]"),
        ("wbe", r"--source_domains has unknown domains \['wbe'\]; the sources have \['code', 'web'\]"),
        ("web,,code", r"--source_domains must be comma-separated domain names"),
    ],
)
def test_unknown_source_domains_of_a_train_file_fail_first(tmp_path, monkeypatch, domains, message):
    """With --train_file an unknown name used to be dropped silently (or, with none left, to fail late with "Unable to
    concatenate an empty list of datasets"), after the tokenizer and the targets were built."""
    import hf_ext.data

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was built before --source_domains was checked")

    monkeypatch.setattr(hf_ext.data, "build_tokenizer", no_tokenizer)
    sources = tmp_path / "sources.jsonl"
    sources.write_text(
        "".join(json.dumps({"text": f"text {i}", "domain": d}) + "\n" for i, d in enumerate(["web", "code"]))
    )
    (tmp_path / "t.txt").write_text("target text\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        main(
            TINY
            + ["--train_file", str(sources), "--target_files", f"t={tmp_path / 't.txt'}", "--output_dir", str(out)]
            + ["--source_domains", domains]
        )
    assert not out.exists()
