"""The metadata_pretrain recipe: a tiny end-to-end run, argument errors, and the slow synthetic reproduction."""

import json
import os

import pytest

from hf_ext.recipes.metadata_pretrain import main

TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "4",
    "--block_size", "64", "--per_device_train_batch_size", "4", "--max_eval_docs", "4", "--doc_eval_steps", "2",
    "--logging_steps", "2", "--guidance_max_new_tokens", "4", "--disable_tqdm", "true", "--vocab_size", "512",
]


def test_recipe_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    results = main([*TINY, "--max_steps", "4", "--output_dir", str(out), "--remove_unused_columns", "true"])
    assert set(results["final"]) == {"url_model_with_context", "url_model_without_context", "baseline"}
    assert all(v > 0 for v in results["final"].values())
    assert [s for s, _ in results["curves"]["with URL context"]] == [2, 4]
    assert (out / "document_loss.png").stat().st_size > 0
    assert json.loads((out / "metadata_results.json").read_text())["cooldown_start_step"] == 4
    assert os.path.isfile(out / "url_conditioned" / "tokenizer.json")
    assert "scale_1.5" in results["guidance_example"]


def test_recipe_argument_errors_before_writing(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--layout"):
        main([*TINY, "--layout", "suffix", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="kind"):
        main([*TINY, "--template", "domain", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="lacks column"):
        main([*TINY, "--template", "topic_format", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="--metadata_dropout"):
        main([*TINY, "--metadata_dropout", "2", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.slow
def test_url_conditioning_speeds_up_training_and_guidance_steers(tmp_path):
    """Synthetic corpus where the URL host decides most of each document's words (paper claim, small scale)."""
    max_steps = 300
    results = main([
        "--dataset", "synthetic", "--max_steps", str(max_steps), "--doc_eval_steps", "20", "--hidden_size", "64",
        "--intermediate_size", "128", "--num_hidden_layers", "2", "--block_size", "128",
        "--per_device_train_batch_size", "16", "--max_eval_docs", "100", "--cooldown_fraction", "0",
        "--guidance_scale", "3", "--guidance_samples", "32", "--guidance_prompt", "", "--logging_steps", "50", "--disable_tqdm", "true",
        "--output_dir", str(tmp_path),
    ])
    final = results["final"]
    steps = results["steps_to_baseline_final_loss"]["url_conditioned"]
    print(json.dumps({"final": final, "steps_to_match": steps, "share": results["domain_token_share"]}))
    # URL-conditioned training reaches the baseline's final loss in clearly fewer steps
    assert steps is not None and steps <= 0.8 * max_steps
    assert final["url_model_with_context"] < final["baseline"]
    assert final["url_model_with_context"] < final["url_model_without_context"]
    # guidance towards a host puts more of its words into sampled continuations than scale 1 (mean over the 4 hosts,
    # and for most hosts individually)
    share = results["domain_token_share"]
    assert share["scale_3"] > share["scale_1"] + 0.05
    assert sum(v["scale_3"] > v["scale_1"] for v in share["per_host"].values()) >= 3
