"""`evaluate_with_prefix`: a prompt that carries the prefix must fit the model's context whole (md25 audit; rv26: also
when lm-eval puts a system instruction or a chat template's header before it).

lm-eval cuts a prompt longer than the model's context from the left, so the prefix (the URL of the metadata recipe's
with-URL condition) went first, and the score was reported as the with-prefix one; the only sign was lm-eval's generic
"Truncating N tokens from the left" warning. Such a run is now refused with a `ValueError` before the model scores
anything, with or without `encode_prefix_apart`; prompts that fit are encoded and scored exactly as before.
"""

import types

import pytest
import torch

pytest.importorskip("lm_eval")

from hf_ext.evaluation import prompting  # noqa: E402
from hf_ext.evaluation.prompting import _encode_prefixes_apart, evaluate_with_prefix  # noqa: E402


def _recording_llama(tok, max_positions: int):
    """A tiny Llama whose forward records the (unpadded) ids it is given."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=max_positions)).eval()  # fmt: skip
    model.seen = []
    forward = model.forward

    def recording(self, input_ids=None, attention_mask=None, **kwargs):
        rows = input_ids.tolist()
        if attention_mask is not None:
            rows = [[t for t, m in zip(r, mr) if m] for r, mr in zip(rows, attention_mask.tolist())]
        self.seen.extend(rows)
        return forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model.forward = types.MethodType(recording, model)
    return model


def _prefixes(tok):
    bos = tok.bos_token
    return {
        "template": bos + "URL: {{host}}\n\n",  # rendered per document (lm-eval's description)
        "function": lambda doc: f"{bos}URL: {doc['host']}\n\n",
        "bos": bos,  # the metadata recipe's without-URL prefix of its baseline
    }


@pytest.mark.parametrize("apart", [True, False])
@pytest.mark.parametrize("kind", ["template", "function", "bos"])
def test_a_prompt_longer_than_the_context_is_refused_before_the_model_scores(small_tokenizer, apart, kind):
    """The audit's scenario: a tiny Llama with 160 positions, hf_ext_cloze at 3 shots (prompts of 300-450 tokens with
    this tokenizer). Before the fix lm-eval scored 160-token windows without the prefix."""
    model = _recording_llama(small_tokenizer, 160)
    with pytest.raises(ValueError) as err:
        evaluate_with_prefix(model, small_tokenizer, ["hf_ext_cloze"], prefix=_prefixes(small_tokenizer)[kind],
                             num_fewshot=3, limit=4, batch_size=2, encode_prefix_apart=apart)  # fmt: skip
    message = str(err.value)
    assert "max_length=160" in message and "lm-eval keeps only the last 161" in message
    assert int(message.split(" is ")[1].split(" tokens")[0]) > 161  # the prompt's own token count
    assert "num_fewshot" in message and "--eval_fewshot" in message and "larger max_length" in message
    assert model.seen == []  # refused while lm-eval tokenizes the requests: nothing was scored


def test_prompts_that_just_fit_are_scored_and_the_first_too_long_one_is_refused(small_tokenizer):
    """The limit is lm-eval's own: a log-likelihood request keeps the last max_length + 1 tokens of context +
    continuation. With max_length one token below the longest request it is refused; at that length it runs, and
    every scored row starts with its prefix."""
    common = dict(tasks=["hf_ext_cloze"], prefix=_prefixes(small_tokenizer)["function"], num_fewshot=1, limit=3,
                  batch_size=1, encode_prefix_apart=True)  # fmt: skip
    model = _recording_llama(small_tokenizer, 4096)
    evaluate_with_prefix(model, small_tokenizer, **common)
    longest = max(len(r) for r in model.seen) + 1  # the fed row lacks the continuation's last token
    model.seen.clear()
    evaluate_with_prefix(model, small_tokenizer, max_length=longest - 1, **common)
    assert max(len(r) for r in model.seen) == longest - 1
    bos = small_tokenizer.bos_token_id
    assert all(r[0] == bos for r in model.seen)  # the prefix is there: [BOS] URL: ...
    with pytest.raises(ValueError, match=f"is {longest} tokens, but lm-eval keeps only the last {longest - 1} "):
        evaluate_with_prefix(model, small_tokenizer, max_length=longest - 2, **common)


@pytest.mark.parametrize("apart", [True, False])
def test_prompts_that_fit_are_encoded_and_scored_as_before(small_tokenizer, apart):
    """The check changes nothing for prompts that fit (the normal case). Reference: lm-eval itself, on an `HFLM` with
    the template as the task description, as evaluate_with_prefix ran without encode_prefix_apart before the fix (a
    string prefix is now rendered by evaluate_with_prefix, in lm-eval's Jinja environment, to collect the prefixes).
    With encode_prefix_apart the prompts are the same strings, the ids the prefix's then the rest's."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from hf_ext.evaluation.harness import task_manager

    template = _prefixes(small_tokenizer)["template"]
    common = dict(num_fewshot=2, limit=4, log_samples=True, bootstrap_iters=0)
    ref_model = _recording_llama(small_tokenizer, 4096)
    tm = task_manager(include_defaults=False)
    task = tm.load(["hf_ext_cloze"])["tasks"]["hf_ext_cloze"]
    task.set_config("description", template)
    lm = HFLM(pretrained=ref_model, tokenizer=small_tokenizer, batch_size=3, device="cpu")
    ref = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, random_seed=1234, numpy_random_seed=1234,
                                  torch_random_seed=1234, fewshot_random_seed=1234, **common)  # fmt: skip
    model = _recording_llama(small_tokenizer, 4096)
    got = evaluate_with_prefix(model, small_tokenizer, ["hf_ext_cloze"], prefix=template, batch_size=3,
                               encode_prefix_apart=apart, **common)  # fmt: skip
    prompts = [s["arguments"] for s in got["samples"]["hf_ext_cloze"]]
    assert prompts == [s["arguments"] for s in ref["samples"]["hf_ext_cloze"]]  # byte-identical prompts
    assert all(p[0][0].startswith(template.split("{{")[0]) for p in prompts)
    if apart:  # each row: the prefix's ids, then the rest's (the BPE may merge across the boundary when whole)
        for (context, target), sample in zip([p[0] for p in prompts], got["samples"]["hf_ext_cloze"]):
            prefix = f"{small_tokenizer.bos_token}URL: {sample['doc']['host']}\n\n"
            ids = small_tokenizer.encode(prefix, add_special_tokens=False)
            ids += small_tokenizer.encode((context + target)[len(prefix) :], add_special_tokens=False)
            assert any(row[: len(ids) - 1] == ids[:-1] for row in model.seen)  # rows are right-padded
    else:
        assert model.seen == ref_model.seen
        assert got["results"]["hf_ext_cloze"] == ref["results"]["hf_ext_cloze"]


@pytest.mark.parametrize("apart", [True, False])
def test_generation_prompts_are_checked_against_the_room_left_for_generating(small_tokenizer, apart):
    """generate_until encodes its prompts with `tok_batch_encode(..., left_truncate_len=max_length - max_gen_toks)`:
    a prefixed prompt longer than that is refused; a batch that fits is what lm-eval's own encoding gives, and a
    prompt without a prefix is still cut by lm-eval as before."""
    from lm_eval.models.huggingface import HFLM

    model = _recording_llama(small_tokenizer, 4096)
    lm = HFLM(pretrained=model, tokenizer=small_tokenizer, batch_size=2, device="cpu")
    prefix = small_tokenizer.bos_token + "URL: docs.python.org\n\n"
    texts = [prefix + "A short one", prefix + "And a somewhat longer prompt here"]
    lengths = [len(lm.tok_encode(t)) for t in texts]  # lm-eval's own encoding, before the wrap
    plain = lm.tok_batch_encode(texts, left_truncate_len=max(lengths))
    overlong_plain = "no prefix " * 30
    mixed_plain = lm.tok_batch_encode([texts[0], overlong_plain], left_truncate_len=max(lengths))
    restore = _encode_prefixes_apart(lm, {prefix}, apart=apart)
    longest = max(len(lm.tok_encode(t)) for t in texts)  # apart: the prefix's ids, then the rest's
    room = longest - 1  # max_length - max_gen_toks, one token short for the longer prompt
    with pytest.raises(ValueError, match=f"is {longest} tokens, but lm-eval keeps only the last {room} .*generate"):
        lm.tok_batch_encode(texts, left_truncate_len=room)
    with pytest.raises(ValueError, match=r"max_length=4096, \+ 1 for the last token"):  # tok_encode: log-likelihood
        lm.tok_encode(prefix + "word " * 5000)
    if not apart:  # prompts that fit: lm-eval's own tensors; one without a prefix is cut by lm-eval as before
        got = lm.tok_batch_encode(texts, left_truncate_len=max(lengths))
        assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])
        got = lm.tok_batch_encode([texts[0], overlong_plain], left_truncate_len=max(lengths))
        assert torch.equal(got[0], mixed_plain[0]) and torch.equal(got[1], mixed_plain[1])
        assert got[0].shape[1] == max(lengths)  # the prompt without a prefix was cut
    restore()
    assert "tok_encode" not in vars(lm) and "tok_batch_encode" not in vars(lm)  # the class's methods again


def test_an_lm_object_passed_in_gets_its_own_encoding_back(small_tokenizer):
    """A caller's `HFLM` was left with evaluate_with_prefix's wrapped `tok_encode` (whose prefixes were those of the
    finished run); it now gets its own methods back, also after a refusal."""
    from lm_eval.models.huggingface import HFLM

    model = _recording_llama(small_tokenizer, 320)  # 0-shot prompts are 106 and 262 tokens, 3-shot ones 384 and 551
    lm = HFLM(pretrained=model, tokenizer=small_tokenizer, batch_size=1, device="cpu")
    prefix = _prefixes(small_tokenizer)["function"]
    evaluate_with_prefix(lm, tasks=["hf_ext_cloze"], prefix=prefix, num_fewshot=0, limit=2, encode_prefix_apart=True)
    assert "tok_encode" not in vars(lm) and "tok_batch_encode" not in vars(lm)
    with pytest.raises(ValueError, match="max_length=320"):
        evaluate_with_prefix(lm, tasks=["hf_ext_cloze"], prefix=prefix, num_fewshot=3, limit=2)
    assert "tok_encode" not in vars(lm) and "tok_batch_encode" not in vars(lm)


def test_a_rolling_task_with_a_prefix_is_refused(small_tokenizer, tmp_path, monkeypatch):
    """lm-eval builds loglikelihood_rolling requests from the document's text alone (no description): the prefix never
    reached the model and the score was reported as a with-prefix one. With no prefix the task runs as before."""
    from hf_ext.evaluation.harness import task_dir

    (tmp_path / "rolling.yaml").write_text(
        f"include: {task_dir()}/hf_ext_cloze.yaml\ntask: hf_ext_test_rolling\noutput_type: loglikelihood_rolling\n"
        'doc_to_target: "{{context}}"\nmetric_list:\n  - metric: word_perplexity\n'
    )
    # index only the packaged tasks and this one (lm-eval's whole library takes a minute on a loaded machine)
    monkeypatch.setattr(prompting, "_PACKAGED", prompting._PACKAGED | {"hf_ext_test_rolling"})
    model = _recording_llama(small_tokenizer, 4096)
    common = dict(tasks=["hf_ext_test_rolling"], limit=2, include_path=str(tmp_path), bootstrap_iters=0)
    with pytest.raises(ValueError, match=r"\['hf_ext_test_rolling'\] are loglikelihood_rolling tasks"):
        evaluate_with_prefix(model, small_tokenizer, prefix=_prefixes(small_tokenizer)["bos"], **common)
    assert model.seen == []
    res = evaluate_with_prefix(model, small_tokenizer, prefix="", **common)
    assert res["results"]["hf_ext_test_rolling"]["word_perplexity,none"] > 1


# rv26 F1: the check (and encode_prefix_apart) only looked at prompts that *start* with the prefix. lm-eval puts a
# `system_instruction` (a simple_evaluate argument passed through **kwargs) and a chat template's header before the
# task description, so those runs went through with the prefix cut off (0 of the scored rows held the URL).


def _chat_tokenizer(tok):
    """A copy of `tok` with a minimal chat template (the system turn holds lm-eval's description, the prefix; no
    newline after the role, so the 4096-token BPE merges across the prefix's start when the prompt is encoded whole)."""
    import copy

    tok = copy.deepcopy(tok)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>: {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return tok


_BEFORE_PREFIX = {
    "system_instruction": dict(system_instruction="Score the text."),
    "chat_template": dict(apply_chat_template=True),
    "chat_multiturn": dict(apply_chat_template=True, fewshot_as_multiturn=True),
}


@pytest.mark.parametrize("apart", [True, False])
@pytest.mark.parametrize("before", sorted(_BEFORE_PREFIX))
def test_a_prompt_with_text_before_the_prefix_is_checked_too(small_tokenizer, before, apart):
    """The audit's scenario with text before the prefix: 160 positions, hf_ext_cloze at 3 shots. Before the fix each
    of these ran and scored 160-token windows without the URL."""
    tok = _chat_tokenizer(small_tokenizer)
    model = _recording_llama(tok, 160)
    with pytest.raises(
        ValueError, match=r"a prompt with the prefix is \d+ tokens, but lm-eval keeps only the last 161"
    ):
        evaluate_with_prefix(model, tok, ["hf_ext_cloze"], prefix=_prefixes(tok)["function"], num_fewshot=3, limit=2,
                             batch_size=1, encode_prefix_apart=apart, **_BEFORE_PREFIX[before])  # fmt: skip
    assert model.seen == []


@pytest.mark.parametrize("before", sorted(_BEFORE_PREFIX))
def test_text_before_the_prefix_is_encoded_apart_and_every_row_keeps_the_prefix(tokenizer, before):
    """Prompts that fit: with encode_prefix_apart the model receives [the text before the prefix, as lm-eval encodes
    it] + the prefix's own ids + the rest's own ids (was: the whole string at once, the prefix not split off; the
    4096-token BPE merges across the prefix's ends, e.g. "text.\n\nURL" and "\n\nGeneric")."""
    from lm_eval.models.huggingface import HFLM

    tok = _chat_tokenizer(tokenizer)
    model = _recording_llama(tok, 4096)
    prefix = lambda doc: f"URL: {doc['host']}\n\n"  # noqa: E731 (no BOS: lm-eval adds it to the text before)
    got = evaluate_with_prefix(model, tok, ["hf_ext_cloze"], prefix=prefix, num_fewshot=1, limit=2, batch_size=1,
                               encode_prefix_apart=True, log_samples=True, bootstrap_iters=0,
                               **_BEFORE_PREFIX[before])  # fmt: skip
    own = HFLM(pretrained=_recording_llama(tok, 4096), tokenizer=tok, batch_size=1, device="cpu")
    expected = []
    for sample in got["samples"]["hf_ext_cloze"]:
        context, target = sample["arguments"][0]
        whole, url = context + target, prefix(sample["doc"])
        start = whole.index(url)
        assert start > 0  # text before the prefix: the system instruction or the chat template's header
        ids = own.tok_encode(whole[:start]) + tok.encode(url, add_special_tokens=False)
        expected.append(ids + tok.encode(whole[start + len(url) :], add_special_tokens=False))
    assert sorted(model.seen) == sorted(e[:-1] for e in expected)  # the fed rows lack the target's last token


# rv26 F3: `check_prefix_fits` raises what evaluate_with_prefix would raise for the same prompts, without scoring, on a
# model built on the meta device (the metadata recipe checks --eval_fewshot with it before training).


def _meta_llama(tok, max_positions: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=1, num_attention_heads=2,
                                            max_position_embeddings=max_positions))  # fmt: skip


@pytest.mark.parametrize(
    "kind, apart, extra",
    [
        ("loglikelihood", True, {}),
        ("loglikelihood", False, {}),
        ("generate_until", True, {}),
        ("generate_until", False, {}),
        ("loglikelihood", True, {"system_instruction": "Score the text."}),
    ],
)
def test_the_early_check_agrees_with_the_evaluation_at_the_context_limit(small_tokenizer, tmp_path, monkeypatch, kind,
                                                                         apart, extra):  # fmt: skip
    """P = the fewest positions (the config's max_position_embeddings, read by lm-eval's HFLM) the early check accepts.
    The evaluation runs at P and refuses P - 1 with the early check's message; nothing is scored by the check."""
    from hf_ext.evaluation.harness import task_dir
    from hf_ext.evaluation.prompting import check_prefix_fits

    (tmp_path / "gen.yaml").write_text(
        f"include: {task_dir()}/hf_ext_cloze.yaml\ntask: hf_ext_test_gen\noutput_type: generate_until\n"
        'doc_to_target: "{{target}}"\ngeneration_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    monkeypatch.setattr(prompting, "_PACKAGED", prompting._PACKAGED | {"hf_ext_test_gen"})
    task = "hf_ext_cloze" if kind == "loglikelihood" else "hf_ext_test_gen"
    common = dict(tasks=[task], prefix=_prefixes(small_tokenizer)["function"], num_fewshot=1, limit=3,
                  include_path=str(tmp_path), encode_prefix_apart=apart, **extra)  # fmt: skip

    def early(positions: int) -> str:
        try:
            check_prefix_fits(_meta_llama(small_tokenizer, positions), small_tokenizer, **common)
            return "ok"
        except ValueError as err:
            return str(err)

    low, high = 16, 4096  # refused at low, accepted at high
    assert early(low) != "ok" and early(high) == "ok"
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if early(mid) == "ok" else (mid, high)
    refusal = early(high - 1)
    assert "max_length=" + str(high - 1) in refusal
    model = _recording_llama(small_tokenizer, high)
    evaluate_with_prefix(model, small_tokenizer, batch_size=2, bootstrap_iters=0, **common)  # accepted: runs
    assert model.seen
    model = _recording_llama(small_tokenizer, high - 1)
    with pytest.raises(ValueError) as err:
        evaluate_with_prefix(model, small_tokenizer, batch_size=2, bootstrap_iters=0, **common)
    assert str(err.value) == refusal and model.seen == []


def test_the_early_check_refuses_a_rolling_task_and_checks_nothing_without_a_prefix(small_tokenizer, tmp_path,
                                                                                    monkeypatch):  # fmt: skip
    from hf_ext.evaluation.harness import task_dir
    from hf_ext.evaluation.prompting import check_prefix_fits

    (tmp_path / "rolling.yaml").write_text(
        f"include: {task_dir()}/hf_ext_cloze.yaml\ntask: hf_ext_test_rolling\noutput_type: loglikelihood_rolling\n"
        'doc_to_target: "{{context}}"\nmetric_list:\n  - metric: word_perplexity\n'
    )
    monkeypatch.setattr(prompting, "_PACKAGED", prompting._PACKAGED | {"hf_ext_test_rolling"})
    common = dict(tasks=["hf_ext_test_rolling"], limit=2, include_path=str(tmp_path))
    with pytest.raises(ValueError, match=r"\['hf_ext_test_rolling'\] are loglikelihood_rolling tasks"):
        check_prefix_fits(_meta_llama(small_tokenizer, 4096), small_tokenizer, prefix="<s>", **common)
    check_prefix_fits(_meta_llama(small_tokenizer, 16), small_tokenizer, prefix="", num_fewshot=3, **common)
