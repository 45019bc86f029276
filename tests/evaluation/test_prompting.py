"""Recipe-side lm-eval helpers: task-list checks and prompts with a prefix in front (MeCo's conditional inference)."""

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation.prompting import check_eval_tasks, evaluate_with_prefix, parse_shots  # noqa: E402


def _llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def test_prefix_goes_once_in_front_of_every_prompt(small_tokenizer):
    model = _llama(small_tokenizer)
    bos = small_tokenizer.bos_token
    common = dict(tasks=["hf_ext_cloze"], limit=3, log_samples=True, bootstrap_iters=0)
    per_doc = evaluate_with_prefix(model, small_tokenizer, prefix=lambda d: f"{bos}URL: {d['url']}\n\n", num_fewshot=2,
                                   **common)  # fmt: skip
    for sample in per_doc["samples"]["hf_ext_cloze"]:
        prompt = sample["arguments"][0][0]
        head = f"{bos}URL: {sample['doc']['url']}\n\n"
        assert prompt.startswith(head) and prompt.count("URL: ") == 1  # once, before the shots
        assert prompt.endswith(sample["doc"]["context"]) and prompt.count("\n\n") == 3  # prefix + 2 shots
    plain = evaluate_with_prefix(model, small_tokenizer, prefix=bos, num_fewshot=0, **common)
    jinja = evaluate_with_prefix(model, small_tokenizer, prefix="URL: {{host}}\n\n", num_fewshot=0, **common)
    for a, b in zip(plain["samples"]["hf_ext_cloze"], jinja["samples"]["hf_ext_cloze"]):
        assert a["arguments"][0][0] == bos + a["doc"]["context"]
        assert b["arguments"][0][0] == f"URL: {b['doc']['host']}\n\n" + b["doc"]["context"]
    ppl = [r["results"]["hf_ext_cloze"]["perplexity,none"] for r in (plain, jinja)]
    assert ppl[0] != pytest.approx(ppl[1], rel=1e-6)  # the prefix is scored as context


def test_prefix_runs_honour_the_domains_metadata_as_evaluate_model_does(small_tokenizer):
    """`metadata={"domains": ...}` limits the test items to those hosts (was: accepted through **kwargs and ignored, so
    all 97 cloze items of 9 hosts were scored)."""
    from hf_ext.evaluation import evaluate_model

    model = _llama(small_tokenizer)
    common = dict(tasks=["hf_ext_cloze"], metadata={"domains": "filesystem"}, bootstrap_iters=0, log_samples=True)
    ref = evaluate_model(model, small_tokenizer, **common)
    got = evaluate_with_prefix(model, small_tokenizer, prefix="", **common)
    hosts = {s["doc"]["host"] for s in got["samples"]["hf_ext_cloze"]}
    assert hosts == {s["doc"]["host"] for s in ref["samples"]["hf_ext_cloze"]} == {"filesystem.docs.python.org"}
    assert got["n-samples"]["hf_ext_cloze"] == ref["n-samples"]["hf_ext_cloze"]
    assert got["results"]["hf_ext_cloze"]["perplexity,none"] == pytest.approx(
        ref["results"]["hf_ext_cloze"]["perplexity,none"], rel=1e-6
    )


def test_check_eval_tasks_and_shots():
    assert check_eval_tasks(None) is None
    assert check_eval_tasks(" hf_ext_cloze , hf_ext_domain", metric="acc") == ["hf_ext_cloze", "hf_ext_domain"]
    assert check_eval_tasks("hf_ext_domain", metric="acc,none") == ["hf_ext_domain"]  # lm-eval's key form too
    with pytest.raises(ValueError, match="--tasks must be comma-separated"):
        check_eval_tasks("hf_ext_cloze,", flag="--tasks")
    with pytest.raises(ValueError, match="names a task twice"):
        check_eval_tasks("hf_ext_cloze,hf_ext_cloze")
    with pytest.raises(ValueError, match=r"unknown lm-eval task\(s\) \['hf_ext_nope'\]"):
        check_eval_tasks("hf_ext_cloze,hf_ext_nope")
    with pytest.raises(ValueError, match="reports"):
        check_eval_tasks("hf_ext_cloze", metric="acc_norm")
    with pytest.raises(ValueError, match=r"no \['url'\] field"):
        check_eval_tasks("hf_ext_domain", require_fields=["url"])
    assert check_eval_tasks("hf_ext_cloze", require_fields=["url", "host"]) == ["hf_ext_cloze"]
    assert parse_shots("0,5") == [0, 5] and parse_shots(3) == [3]
    for bad in ("", "0,0", "-1", "a"):
        with pytest.raises(ValueError, match="--eval_fewshot"):
            parse_shots(bad)


def test_unknown_task_message_lists_every_packaged_task_and_close_names():
    """The message listed only the two default tasks: hf_ext_cloze_url (the URL-conditioned cloze the metadata recipe
    evaluates) and the hf_ext / hf_ext_metadata groups were missing from it, and a typo got no suggestion."""
    with pytest.raises(ValueError) as err:
        check_eval_tasks("hf_ext_cloze_ulr")
    message = str(err.value)
    assert "did you mean 'hf_ext_cloze_url'" in message or "'hf_ext_cloze_url'?" in message, message
    for name in ("hf_ext", "hf_ext_cloze", "hf_ext_cloze_url", "hf_ext_domain", "hf_ext_metadata"):
        assert f"'{name}'" in message.partition("packaged offline tasks")[2], (name, message)
