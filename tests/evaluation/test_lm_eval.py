"""lm-evaluation-harness on tiny hf_ext models with the packaged offline tasks (in-process and through the CLI)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation import (  # noqa: E402
    evaluate_model,
    evaluate_models,
    format_table,
    results_rows,
    save_for_lm_eval,
    task_dir,
    task_manager,
)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def fog(small_tokenizer):
    from hf_ext.models.fog import FogConfig, FogForCausalLM

    torch.manual_seed(0)
    cfg = FogConfig.fog(vocab_size=len(small_tokenizer), max_position_embeddings=2048, **TINY)
    return FogForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def layer_parallel_dir(small_tokenizer, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=len(small_tokenizer), max_position_embeddings=2048, **{**TINY, "num_hidden_layers": 4}
    )
    model = convert_to_layer_parallel(LlamaForCausalLM(cfg), 0, 2)
    folder = tmp_path_factory.mktemp("lp") / "model"
    save_for_lm_eval(model, small_tokenizer, folder)
    return str(folder)


def test_packaged_tasks_are_found_by_include_path():
    tm = task_manager(include_defaults=False)
    assert {"hf_ext_domain", "hf_ext_cloze"} <= set(tm.all_subtasks)
    assert "hf_ext" in tm.all_tags
    loaded = tm.load(["hf_ext"])["tasks"]
    assert set(loaded) == {"hf_ext_domain", "hf_ext_cloze"}  # the tag runs the two tasks, not the URL variant
    domain = loaded["hf_ext_domain"]
    assert domain.has_training_docs() and domain.config.fewshot_split == "train"
    doc = domain.test_docs()[0]
    assert len(domain.doc_to_choice(doc)) == 9 and 0 <= domain.doc_to_target(doc) < 9
    cloze = loaded["hf_ext_cloze"]
    doc = cloze.test_docs()[0]
    assert cloze.doc_to_target(doc).startswith(" ") and not cloze.doc_to_text(doc).endswith(" ")
    url = tm.load(["hf_ext_metadata"])["tasks"]["hf_ext_cloze_url"]  # same items, MeCo's URL prefix in front
    url_doc = url.test_docs()[0]
    assert url.doc_to_text(url_doc) == f"URL: {doc['host']}\n\n" + cloze.doc_to_text(doc)
    assert doc["host"].endswith(".docs.python.org") and url.doc_to_target(url_doc) == cloze.doc_to_target(doc)


def test_model_object_fewshot_scores_match_the_model(fog, small_tokenizer):
    """simple_evaluate on a FogForCausalLM object: few-shot prompts are built and lm-eval's log-likelihoods are the
    model's own (recomputed here token by token)."""
    res = evaluate_model(fog, small_tokenizer, num_fewshot=2, limit=3, log_samples=True, batch_size=4)
    assert res["n-shot"] == {"hf_ext_domain": 2, "hf_ext_cloze": 2}
    for task in ("hf_ext_domain", "hf_ext_cloze"):
        assert 0.0 <= res["results"][task]["acc,none"] <= 1.0
    assert res["results"]["hf_ext_cloze"]["perplexity,none"] > 1.0
    sample = res["samples"]["hf_ext_domain"][0]
    context, continuation = sample["arguments"][0]
    assert context.count("Passage:") == 3 and context.count("\n\n") >= 2  # two shots + the question
    ids_ctx = small_tokenizer(context, add_special_tokens=False)["input_ids"]
    ids_all = small_tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_cont = len(ids_all) - len(ids_ctx)
    with torch.no_grad():
        logp = torch.log_softmax(fog(torch.tensor([ids_all])).logits[0, :-1].double(), -1)
    target = torch.tensor(ids_all[1:])
    ours = logp[torch.arange(len(target)), target][-n_cont:].sum().item()
    theirs = sample["resps"][0][0][0]
    assert math.isclose(ours, theirs, rel_tol=1e-4, abs_tol=1e-3)
    picked = max(range(9), key=lambda i: sample["resps"][i][0][0])
    assert sample["acc"] == float(picked == sample["target"])


# extended: lm-eval's CLI in a subprocess (torch, transformers and lm-eval imports, then indexing lm-eval's whole
# task library) costs ~30-90 s of the fast suite. Its parts stay there: the same folder evaluated in-process
# (test_evaluate_models_table), the packaged tasks through --include_path (test_packaged_tasks_are_found_by_include_path),
# this folder loaded with trust_remote_code and no hf_ext import
# (test_save_for_lm_eval_folder_loads_as_remote_code_without_hf_ext) and model folders that import nothing from
# hf_ext (tests/test_packaging.py::test_model_folders_import_nothing_from_hf_ext)
@pytest.mark.extended
def test_folder_in_process_and_plain_lm_eval_cli_agree(layer_parallel_dir, tmp_path):
    """A LayerParallelForCausalLM folder: `lm_eval --model hf` (no hf_ext import, trust_remote_code) gives the same
    numbers as simple_evaluate in-process."""
    inproc = evaluate_model(layer_parallel_dir, tasks="hf_ext", limit=4)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "hf",
        "--model_args", f"pretrained={layer_parallel_dir},trust_remote_code=True",
        "--tasks", "hf_ext", "--include_path", task_dir(), "--limit", "4", "--device", "cpu",
        "--output_path", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.rglob("results_*.json"))
    assert files, proc.stderr[-2000:]
    cli = json.loads(files[-1].read_text())
    for task, metric in (
        ("hf_ext_domain", "acc,none"),
        ("hf_ext_cloze", "acc,none"),
        ("hf_ext_cloze", "perplexity,none"),
    ):
        assert math.isclose(cli["results"][task][metric], inproc["results"][task][metric], rel_tol=1e-3), (
            task,
            metric,
        )


def test_save_for_lm_eval_folder_loads_as_remote_code_without_hf_ext(
    layer_parallel_dir, remote_code_logits_without_hf_ext
):
    """rv25 F1: what plain `lm_eval --model hf --model_args pretrained=<folder>,trust_remote_code=True` needs of a
    layer-parallel folder from `save_for_lm_eval`: transformers loads it through the folder's own code in a process
    where hf_ext cannot be imported, and the model gives the same logits as the hf_ext model (the CLI test above is
    `extended`; without the folder's code the load fails: "does not recognize this architecture")."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(layer_parallel_dir).eval()(ids).logits
    name, module = remote_code_logits_without_hf_ext(layer_parallel_dir, ids, expected)
    assert (name, module.split(".")[0]) == ("LayerParallelForCausalLM", "transformers_modules")


def test_evaluate_models_table(fog, small_tokenizer, layer_parallel_dir):
    """Several models (GRAPE vs baselines), with and without the URL prefix, at 0 and k shots (metadata conditioning)."""
    rows = evaluate_models(
        {"fog": fog, "layer_parallel": layer_parallel_dir},
        tasks=["hf_ext_cloze", "hf_ext_cloze_url"],
        num_fewshot=[0, 1],
        tokenizer=small_tokenizer,
        limit=2,
    )
    keys = {(r["model"], r["task"], r["num_fewshot"], r["metric"]) for r in rows}
    models, tasks = ("fog", "layer_parallel"), ("hf_ext_cloze", "hf_ext_cloze_url")
    assert keys == {(m, t, k, x) for m in models for t in tasks for k in (0, 1) for x in ("acc", "perplexity")}
    ppl = {(r["model"], r["task"], r["num_fewshot"]): r["value"] for r in rows if r["metric"] == "perplexity"}
    assert ppl[("fog", "hf_ext_cloze", 0)] != ppl[("fog", "hf_ext_cloze_url", 0)]  # the prefix reaches the model
    assert ppl[("fog", "hf_ext_cloze", 0)] != ppl[("fog", "hf_ext_cloze", 1)]  # and so do the shots
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| layer_parallel | hf_ext_cloze_url | 1 | perplexity |" in table


def test_bad_input(fog, small_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate_model(fog)
    with pytest.raises(ValueError, match="tasks"):
        evaluate_model(fog, small_tokenizer, tasks=[])
    with pytest.raises(ValueError, match="num_fewshot"):
        evaluate_model(fog, small_tokenizer, num_fewshot=-1)
    for limit in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="limit must be a positive"):
            evaluate_model(fog, small_tokenizer, limit=limit)
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_model(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="PreTrainedModel"):
        evaluate_model(object(), small_tokenizer)
    with pytest.raises(ValueError, match="simple_evaluate"):
        results_rows({"acc": 1.0})


def test_save_for_lm_eval_leaves_class_registration_alone(fog, small_tokenizer, tmp_path):
    save_for_lm_eval(fog, small_tokenizer, tmp_path / "a")
    assert (tmp_path / "a" / "modeling_fog.py").is_file()
    assert "auto_map" in json.loads((tmp_path / "a" / "config.json").read_text())
    fog.save_pretrained(tmp_path / "b")  # an ordinary save afterwards writes no remote code
    assert not (tmp_path / "b" / "modeling_fog.py").exists()
    # such a folder loads in-process (import hf_ext registered model_type "fog")
    small_tokenizer.save_pretrained(tmp_path / "b")
    res = evaluate_model(str(tmp_path / "b"), tasks="hf_ext_domain", limit=1)
    assert res["n-samples"]["hf_ext_domain"]["effective"] == 1


@pytest.mark.slow  # ~10 CPU-s: lm-eval's CLI indexes its whole task library
def test_wrapper_cli_loads_a_plain_save_pretrained_folder(fog, small_tokenizer, tmp_path, monkeypatch, capsys):
    """`python -m hf_ext.evaluation` = lm-eval's CLI with hf_ext registered and our tasks included: a folder from a
    plain `save_pretrained` (model_type "fog", no auto_map) loads without trust_remote_code."""
    from hf_ext.evaluation.__main__ import main

    folder = tmp_path / "plain"
    fog.save_pretrained(folder)
    small_tokenizer.save_pretrained(folder)
    assert "auto_map" not in json.loads((folder / "config.json").read_text())
    main(["task_dir"])
    assert capsys.readouterr().out.strip() == task_dir()
    monkeypatch.setattr(sys, "argv", ["x"])
    out = tmp_path / "out"
    main(["--model", "hf", "--model_args", f"pretrained={folder}", "--tasks", "hf_ext_domain", "--limit", "2",
          "--device", "cpu", "--output_path", str(out)])  # fmt: skip
    res = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())
    assert res["n-samples"]["hf_ext_domain"]["effective"] == 2 and "acc,none" in res["results"]["hf_ext_domain"]
