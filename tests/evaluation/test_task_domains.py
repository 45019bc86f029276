"""The packaged tasks restricted to some documentation domains (lm-eval metadata `domains`), as GRAPE's targets use."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from hf_ext.evaluation import task_dir

DATA = Path(task_dir()) / "data"


def _rows(name):
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _utils():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hf_ext_task_utils", Path(task_dir()) / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loaders_keep_only_test_items_of_the_domains():
    utils = _utils()
    full = utils.load_domain()
    assert len(full["test"]) == len(_rows("hf_ext_domain_test.jsonl"))
    wanted = {"networking", "filesystem"}
    expected = Counter(r["domain"] for r in _rows("hf_ext_domain_test.jsonl"))
    sub = utils.load_domain(domains="networking+filesystem", pretrained="ignored")  # lm-eval also passes model args
    assert set(sub["test"]["domain"]) == wanted
    assert len(sub["test"]) == expected["networking"] + expected["filesystem"]
    assert len(sub["train"]) == len(full["train"])  # the few-shot pool is not restricted
    assert utils.load_domain(domains=["filesystem", "networking"])["test"]["id"] == sub["test"]["id"]

    cloze = _rows("hf_ext_cloze_test.jsonl")
    assert {utils.host_domain(r["host"]) for r in cloze} == set(utils.known_domains())  # every host maps to a domain
    sub = utils.load_cloze(domains="data_formats")
    assert len(sub["test"]) == sum(r["host"] == "data-formats.docs.python.org" for r in cloze) > 0

    with pytest.raises(ValueError, match="unknown domains \\['nope'\\]"):
        utils.load_cloze(domains="networking+nope")
    with pytest.raises(TypeError, match="domains"):
        utils.load_domain(domains=3)


def test_evaluate_model_passes_domains_to_the_packaged_tasks(small_tokenizer):
    pytest.importorskip("lm_eval")
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.evaluation import evaluate_model

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(small_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    res = evaluate_model(
        model, small_tokenizer, tasks=["hf_ext_domain", "hf_ext_cloze"], num_fewshot=0, bootstrap_iters=0,
        metadata={"domains": "filesystem"},
    )  # fmt: skip
    n_domain = sum(r["domain"] == "filesystem" for r in _rows("hf_ext_domain_test.jsonl"))
    n_cloze = sum(r["host"].startswith("filesystem.") for r in _rows("hf_ext_cloze_test.jsonl"))
    assert 0 < n_domain < 10 and 0 < n_cloze < 10
    assert res["n-samples"]["hf_ext_domain"]["effective"] == n_domain
    assert res["n-samples"]["hf_ext_cloze"]["effective"] == n_cloze
    assert res["configs"]["hf_ext_domain"]["metadata"]["domains"] == "filesystem"  # recorded with the results
