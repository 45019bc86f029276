"""The metadata_pretrain recipe: a tiny end-to-end run, argument errors, and the slow synthetic reproduction."""

import json
import os

import pytest

from hf_ext.recipes.metadata_pretrain import main

TINY = [
    "--hidden_size",
    "32",
    "--intermediate_size",
    "64",
    "--num_hidden_layers",
    "2",
    "--num_attention_heads",
    "4",
    "--block_size",
    "64",
    "--per_device_train_batch_size",
    "4",
    "--max_eval_docs",
    "4",
    "--doc_eval_steps",
    "2",
    "--logging_steps",
    "2",
    "--guidance_max_new_tokens",
    "4",
    "--disable_tqdm",
    "true",
    "--vocab_size",
    "512",
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
    # rs23 F4: was "kind must be one of (...)", the template factory's parameter, not the flag
    with pytest.raises(ValueError, match=r"--template must be one of url, url_host, .*format, got 'domain'"):
        main([*TINY, "--template", "domain", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="lacks column"):
        main([*TINY, "--template", "topic_format", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="--metadata_dropout"):
        main([*TINY, "--metadata_dropout", "2", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--max_eval_docs", "0"], "--max_eval_docs must be a positive"),
        (["--guidance_max_new_tokens", "0"], "--guidance_max_new_tokens must be a positive"),
        (["--guidance_samples", "0"], "--guidance_samples must be a positive"),
        (["--max_metadata_tokens", "0"], "--max_metadata_tokens must be a positive"),
        (["--block_size", "8"], r"--block_size 8 leaves no room .* 35-token prefix"),
        (["--block_size", "19", "--max_metadata_tokens", "16"], r"--block_size 19 .* use --block_size > 19"),
        (["--layout", "meco", "--max_metadata_tokens", "2"], "max_metadata_tokens=2 leaves no room .* separator"),
        (["--template", "title"], r"--template must be one of url, .*, format, got .title. .*--template column"),
    ],
)
def test_recipe_flags_are_checked_before_anything_is_written(tmp_path, extra, match):
    """Each of these once failed only after training (or after the output folder was created)."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main([*TINY, "--max_steps", "4", "--output_dir", str(out), *extra])
    assert not out.exists()


def test_resumed_recipe_keeps_the_whole_document_loss_curve(tmp_path):
    """The document-loss curve is checkpoint state: a run resumed from checkpoint-4 reports the same curve (and the
    same steps-to-match input) as the uninterrupted run, not only the points after the resume. 6 steps: the points at
    2 and 4 come back from checkpoint-4, the one at 6 is evaluated after the resume."""
    import shutil

    run = [*TINY, "--max_steps", "6", "--run_baseline", "false", "--save_strategy", "steps", "--save_steps", "4",
           "--guidance_max_new_tokens", "1"]  # fmt: skip
    full = main([*run, "--output_dir", str(tmp_path / "full")])
    curve = full["curves"]["with URL context"]
    assert [step for step, _ in curve] == [2, 4, 6]
    resumed_dir = tmp_path / "resumed" / "url_conditioned"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "url_conditioned" / "checkpoint-4", resumed_dir / "checkpoint-4")
    resumed = main([*run, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "last"])
    resumed_curve = resumed["curves"]["with URL context"]
    assert [step for step, _ in resumed_curve] == [2, 4, 6]
    assert resumed_curve[:2] == curve[:2]  # restored from the checkpoint exactly
    assert [loss for _, loss in resumed_curve] == pytest.approx([loss for _, loss in curve], rel=1e-4)
    saved = json.loads((tmp_path / "resumed" / "metadata_results.json").read_text())
    assert [step for step, _ in saved["curves"]["with URL context"]] == [2, 4, 6]
    # the empty-context curve (what the reproduction's speed-up is judged on) is checkpoint state too
    empty, resumed_empty = full["curves"]["URL model, empty context"], resumed["curves"]["URL model, empty context"]
    assert [step for step, _ in resumed_empty] == [step for step, _ in empty] == [2, 4, 6]
    assert resumed_empty[:2] == empty[:2]
    assert [loss for _, loss in resumed_empty] == pytest.approx([loss for _, loss in empty], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [42, 43, 44])
def test_url_conditioning_speeds_up_training_and_guidance_steers(tmp_path, seed):
    """Synthetic corpus where the URL host decides most of each document's words (paper claim, small scale).

    Every claim must hold on each of three seeds (docs/metadata.md reports their mean and spread)."""
    max_steps = 300
    results = main(
        [
            "--dataset",
            "synthetic",
            "--max_steps",
            str(max_steps),
            "--doc_eval_steps",
            "20",
            "--hidden_size",
            "64",
            "--intermediate_size",
            "128",
            "--num_hidden_layers",
            "2",
            "--block_size",
            "128",
            "--per_device_train_batch_size",
            "16",
            "--max_eval_docs",
            "100",
            "--cooldown_fraction",
            "0",
            "--guidance_scale",
            "3",
            "--guidance_samples",
            "32",
            "--guidance_prompt",
            "",
            "--logging_steps",
            "50",
            "--disable_tqdm",
            "true",
            "--seed",
            str(seed),
            "--output_dir",
            str(tmp_path),
        ]
    )
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


def test_recipe_eval_tasks_with_and_without_url_at_0_and_5_shots(tmp_path):
    """Issue 22.3: lm-eval accuracy of both models with and without the URL in front of the prompt, 0 and 5 shots."""
    pytest.importorskip("lm_eval")
    out = tmp_path / "run"
    results = main([*TINY, "--max_steps", "4", "--output_dir", str(out), "--eval_tasks", "hf_ext_cloze",
                    "--eval_limit", "3"])  # fmt: skip
    task_eval = results["task_eval"]
    assert task_eval["shots"] == [0, 5] and task_eval["tasks"] == ["hf_ext_cloze"]
    acc = {(r["model"], r["url"], r["num_fewshot"]): r for r in task_eval["rows"] if r["metric"] == "acc"}
    assert set(acc) == {(m, u, k) for m in ("url_conditioned", "baseline") for u in (False, True) for k in (0, 5)}
    assert all(0.0 <= r["value"] <= 1.0 and r["n"] == 3 and r["task"] == "hf_ext_cloze" for r in acc.values())
    ppl = {
        (r["model"], r["url"], r["num_fewshot"]): r["value"] for r in task_eval["rows"] if r["metric"] == "perplexity"
    }
    for model in ("url_conditioned", "baseline"):  # the URL reached the prompts: the target words score differently
        for k in (0, 5):
            assert ppl[(model, True, k)] != pytest.approx(ppl[(model, False, k)], rel=1e-6)
    assert [(r["metric"], r["model"], r["num_fewshot"]) for r in task_eval["table"]] == [
        (m, name, k) for m in ("acc", "perplexity") for name in ("url_conditioned", "baseline") for k in (0, 5)
    ]
    for r in task_eval["table"]:  # the table reads the rows: value without and with the URL, and the difference
        src = {key: row["value"] for key, row in acc.items()} if r["metric"] == "acc" else ppl
        assert r["without_url"] == src[(r["model"], False, r["num_fewshot"])]
        assert r["with_url"] == src[(r["model"], True, r["num_fewshot"])]
        assert r["gain"] == pytest.approx(r["with_url"] - r["without_url"])
    saved = json.loads((out / "metadata_results.json").read_text())
    assert saved["task_eval"]["table"] == task_eval["table"]
    table = (out / "task_eval.md").read_text().splitlines()
    assert "| metric | without URL | with URL |" in table[0] and len(table) == 2 + 8
    assert table[2].startswith("| url_conditioned | 0 | hf_ext_cloze | acc |")


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--eval_tasks", "hf_ext_cloze,"], "--eval_tasks must be comma-separated"),
        (["--eval_tasks", "hf_ext_clozee"], "unknown lm-eval task"),
        (["--eval_tasks", "hf_ext_domain"], r"have no \['url'\] field"),
        (["--eval_tasks", "hf_ext_cloze", "--eval_fewshot", "0,five"], "--eval_fewshot must be comma-separated"),
        (
            ["--eval_tasks", "hf_ext_cloze", "--eval_fewshot", "0,33"],  # was: lm-eval failed after training
            "hf_ext_cloze has 32 few-shot items; --eval_fewshot 33 needs at most 32",
        ),
        (["--eval_tasks", "hf_ext_cloze", "--eval_metric", "acc_norm"], "not 'acc_norm'; pick the metric"),
    ],
)
def test_recipe_bad_eval_tasks_fail_before_writing(tmp_path, extra, match):
    pytest.importorskip("lm_eval")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main([*TINY, "--max_steps", "4", "--output_dir", str(out), *extra])
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model_type", "no_such_arch"], "--model_type"),
        (["--attn_implementation", "sdpaa"], "--attn_implementation"),
        (["--model_type", "gpt2", "--num_key_value_heads", "2"], "--num_key_value_heads"),
    ],
)
def test_recipe_bad_model_flags_fail_before_writing(tmp_path, extra, match):
    """The recipe shares pretrain's fresh-model builder; a bad architecture or kernel used to fail after the
    tokenizer and packing."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main([*TINY, "--max_steps", "4", "--output_dir", str(out), *extra])
    assert not out.exists()


@pytest.mark.parametrize("layout", ["context", "meco"])
def test_eval_prompt_prefixes_follow_the_training_layout(ctx_tokenizer, layout):
    from hf_ext.metadata import MetadataEncoder
    from hf_ext.recipes.metadata_pretrain import MetadataArguments, _prompt_prefixes, _template

    args = MetadataArguments(
        layout=layout, template="url" if layout == "context" else "url_host", max_metadata_tokens=None
    )
    prefixes = _prompt_prefixes(ctx_tokenizer, _template(args), args)
    doc = {"url": "https://networking.docs.python.org/3/library/socket.html", "context": "x"}
    bos = ctx_tokenizer.bos_token
    if layout == "context":
        assert prefixes[("url_conditioned", True)](doc) == f"{bos}<|context_begin|>{doc['url']}<|context_end|>"
        assert prefixes[("url_conditioned", False)] == f"{bos}<|context_begin|><|context_end|>"  # the dropped form
    else:
        assert prefixes[("url_conditioned", True)](doc) == f"{bos}URL: networking.docs.python.org\n\n"
        assert prefixes[("url_conditioned", False)] == bos
    assert prefixes[("baseline", False)] == bos and prefixes[("baseline", True)] is prefixes[("url_conditioned", True)]
    args.eval_url = "https://en.wikipedia.org/"  # a task whose documents carry no URL gets the fixed one
    fixed = _prompt_prefixes(ctx_tokenizer, _template(args), args)[("url_conditioned", True)]({"query": "x"})
    assert fixed == prefixes[("url_conditioned", True)]({"url": "https://en.wikipedia.org/"})
    assert "wikipedia" in fixed and prefixes[("url_conditioned", True)](doc) != fixed  # a document's own URL wins
    args.eval_url = None
    args.max_metadata_tokens = 3  # metadata cut to the training limit; the prompt re-encodes to the training tokens
    short = _prompt_prefixes(ctx_tokenizer, _template(args), args)[("url_conditioned", True)](doc)
    encoder = MetadataEncoder(ctx_tokenizer, layout=layout, max_metadata_tokens=3)
    trained = encoder.prefix_ids([_template(args)(doc)])[0]
    assert ctx_tokenizer(short, add_special_tokens=False)["input_ids"] == trained and len(trained) < 10


def test_validation_file_replaces_the_corpus_held_out_split(tmp_path):
    """--validation_file was ignored when training on the embedded corpus (the default)."""
    import json

    from hf_ext.recipes.metadata_pretrain import MetadataDataArguments, load_documents

    valid = tmp_path / "valid.jsonl"
    rows = [{"text": f"held-out document {i}", "url": f"https://v.org/{i}"} for i in range(3)]
    valid.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train, evaluation, _ = load_documents(MetadataDataArguments(validation_file=str(valid)), seed=0)
    assert evaluation["text"] == [r["text"] for r in rows] and evaluation["url"] == [r["url"] for r in rows]
    assert len(train) > 100  # still the embedded corpus
