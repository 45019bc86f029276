"""Fixes of the rv26 audit on the metadata side.

1. (F5) A fast BPE without byte fallback whose pad or EOS token is its `<unk>` (the common
   `tokenizer.pad_token = tokenizer.unk_token`) was refused with "use a tokenizer that supports split_special_tokens
   (any fast tokenizer does)": wrong advice for a fast tokenizer. The cause is that an unknown character gives `<unk>`,
   whose id is also the pad/EOS id; the message now says so and names the fix.
2. (F3) The recipe refused an `--eval_fewshot` whose prompts do not fit the model's context (lm-eval would cut the URL
   off) and a `loglikelihood_rolling` task in `--eval_tasks` only after training both models, and wrote no results.
   Both are now refused with the argument checks, before any training or output; the early length check agrees with
   the evaluation's own refusal (same prompts, token counts and limit).
"""

import copy
import re

import pytest
import torch

from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END, MetadataEncoder, add_context_tokens, metadata_template

from .test_md25_fixes import _unk_tokenizer
from .test_recipe import TINY

# ---------------------------------------------------------------------------------------------------------------------
# 1. <unk> that is also the pad / EOS token: the refusal names the cause and the fix


@pytest.mark.parametrize("layout", ["context", "meco"])
@pytest.mark.parametrize("role", ["pad", "eos"])
def test_unk_shared_with_pad_or_eos_is_refused_with_advice_that_applies(layout, role):
    tok = _unk_tokenizer(**{f"{role}_token": "<unk>"})
    assert tok.is_fast and getattr(tok, f"{role}_token_id") == tok.unk_token_id
    add_context_tokens(tok)
    with pytest.raises(ValueError) as err:
        MetadataEncoder(tok, layout=layout)
    message = str(err.value)
    assert f"as its unk token '<unk>', id {tok.unk_token_id}, which is also its {role} token" in message
    assert f"its own {role} token (not `tokenizer.{role}_token = tokenizer.unk_token`)" in message
    assert re.search(r"characters it does not know \(here '[^']*<[^']*', from special-token strings", message)
    assert "byte fallback" in message
    assert "any fast tokenizer does" not in message  # the old advice: this tokenizer is a fast one
    # following the advice: its own pad / EOS token
    fixed = _unk_tokenizer()
    add_context_tokens(fixed)
    MetadataEncoder(fixed, layout=layout)


def test_other_forged_control_tokens_keep_the_split_special_tokens_advice():
    """Markers added as ordinary tokens are not split by split_special_tokens: that refusal is unchanged, also when
    <unk> is the pad token as well (the markers, not only <unk>, leak)."""
    tok = _unk_tokenizer(pad_token="<unk>")
    tok.add_tokens([CONTEXT_BEGIN, CONTEXT_END])
    with pytest.raises(ValueError, match="use a tokenizer that supports split_special_tokens"):
        MetadataEncoder(tok)


# ---------------------------------------------------------------------------------------------------------------------
# 2. --eval_tasks / --eval_fewshot refused before training


def _recipe_setup(shots: int):
    """The arguments, tokenizer and template of `TINY` + `--eval_tasks hf_ext_cloze --eval_limit 2` as the recipe builds
    them (512-token BPE with the context tokens; models with 4 * max(64, 256) = 1024 positions)."""
    from hf_ext.data import build_tokenizer
    from hf_ext.recipes.metadata_pretrain import MetadataArguments, MetadataDataArguments, MetadataModelArguments

    model_args = MetadataModelArguments(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4)  # fmt: skip
    data_args = MetadataDataArguments(block_size=64, vocab_size=512)
    meta_args = MetadataArguments(eval_tasks="hf_ext_cloze", eval_limit=2, eval_fewshot=str(shots))
    tok = copy.deepcopy(build_tokenizer(512))
    add_context_tokens(tok)
    return model_args, data_args, meta_args, tok, metadata_template("url")


def test_eval_fewshot_too_long_for_the_context_is_refused_before_training(tmp_path):
    """The audit's run: 0 and 9 shots. Before the fix both models were trained and saved and the 0-shot evaluations
    ran (about 20 s) before the 9-shot refusal; no metadata_results.json. Now nothing is trained or written."""
    pytest.importorskip("lm_eval")
    from hf_ext.recipes.metadata_pretrain import main

    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        main([*TINY, "--max_steps", "4", "--output_dir", str(out), "--eval_tasks", "hf_ext_cloze", "--eval_limit", "2",
              "--eval_fewshot", "0,9"])  # fmt: skip
    message = str(err.value)
    assert message.startswith(
        "--eval_fewshot 9 (--eval_tasks hf_ext_cloze, the url_conditioned model without the URL)"
    )
    assert "checked before training" in message
    assert re.search(r"is \d+ tokens, but lm-eval keeps only the last 1025 .*max_length=1024", message)
    assert not out.exists()


def test_early_prompt_check_agrees_with_the_evaluation_both_ways(tmp_path):
    """K = the most shots the early check accepts for this setup. At K the whole run goes through, the evaluation
    included (the evaluation accepts what the early check accepted); at K + 1 the run is refused before training, and
    the evaluation itself refuses K + 1 too (the early check refuses nothing the evaluation would have scored)."""
    pytest.importorskip("lm_eval")
    from hf_ext.recipes.metadata_pretrain import (
        build_model,
        check_eval_prompts_fit,
        evaluate_tasks_with_and_without_url,
        main,
    )

    accepted = []
    for k in range(12):
        try:
            check_eval_prompts_fit(*_recipe_setup(k))
            accepted.append(k)
        except ValueError as err:
            first_refused, early = k, str(err)
            break
    else:
        pytest.fail("the early check accepted 0-11 shots (the audit refused 9)")
    assert accepted == list(range(first_refused)) and first_refused >= 2
    common = [
        *TINY,
        "--max_steps",
        "2",
        "--eval_tasks",
        "hf_ext_cloze",
        "--eval_limit",
        "2",
        "--run_baseline",
        "false",
    ]
    res = main([*common, "--output_dir", str(tmp_path / "fits"), "--eval_fewshot", str(first_refused - 1)])
    assert {(r["url"], r["num_fewshot"]) for r in res["task_eval"]["rows"]} == {(u, first_refused - 1) for u in (0, 1)}
    with pytest.raises(ValueError, match=f"--eval_fewshot {first_refused} .*checked before training"):
        main([*common, "--output_dir", str(tmp_path / "over"), "--eval_fewshot", str(first_refused)])
    assert not (tmp_path / "over").exists()
    # the evaluation's own check, on a model of the same config, refuses K + 1 with the same message
    model_args, data_args, meta_args, tok, template = _recipe_setup(first_refused)
    torch.manual_seed(0)
    model = build_model(model_args, tok, data_args.block_size)
    with pytest.raises(ValueError) as late:
        evaluate_tasks_with_and_without_url({"url_conditioned": model}, tok, template, meta_args)
    assert early.endswith(str(late.value))


def test_a_rolling_task_in_eval_tasks_is_refused_before_training(tmp_path, monkeypatch):
    """A loglikelihood_rolling task gets no prefix from lm-eval (its requests are the document's text alone): refused
    by the evaluation, but only after training. Now by the --eval_tasks check."""
    pytest.importorskip("lm_eval")
    from hf_ext.evaluation import harness, prompting
    from hf_ext.recipes.metadata_pretrain import main

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rolling.yaml").write_text(
        f"include: {harness.task_dir()}/hf_ext_cloze.yaml\ntask: hf_ext_test_rolling\n"
        'output_type: loglikelihood_rolling\ndoc_to_target: "{{context}}"\nmetric_list:\n  - metric: word_perplexity\n'
    )
    # the recipe's task checks see the packaged tasks and this one (lm-eval's whole library takes a minute to index)
    monkeypatch.setattr(
        prompting, "task_manager", lambda include_path=None, **kw: harness.task_manager(str(tasks), **kw)
    )
    monkeypatch.setattr(prompting, "_PACKAGED", prompting._PACKAGED | {"hf_ext_test_rolling"})
    out = tmp_path / "run"
    with pytest.raises(
        ValueError, match=r"--eval_tasks: task\(s\) \['hf_ext_test_rolling'\] are loglikelihood_rolling"
    ):
        main([*TINY, "--max_steps", "2", "--output_dir", str(out), "--eval_tasks", "hf_ext_test_rolling",
              "--eval_metric", "word_perplexity", "--eval_limit", "2", "--eval_fewshot", "0"])  # fmt: skip
    assert not out.exists()
