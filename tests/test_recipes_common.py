"""Every recipe, the same way: `--help` works, bad arguments fail before any work naming the flag, resume flags."""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import subprocess
import sys

import pytest

from hf_ext.recipes import available_recipes

RECIPES = sorted(available_recipes())


def recipe_main(name):
    return importlib.import_module(f"hf_ext.recipes.{name}").main


@functools.cache
def help_text(name: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        recipe_main(name)(["--help"])
    assert exc.value.code == 0
    return out.getvalue()


def test_every_listed_recipe_has_a_script_and_help(repo_root):
    """`hf-ext list` prints exactly the recipes; each has `scripts/<name>.py` whose `--help` exits 0 (a bare `%` in a
    help text used to crash argparse for `compliance` and `hyperinf`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    listed = subprocess.run([sys.executable, "-m", "hf_ext.cli", "list"], capture_output=True, text=True, env=env)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert names == RECIPES and len(names) >= 10
    for name in names:
        assert os.path.isfile(os.path.join(repo_root, "scripts", f"{name}.py")), name


def test_help_survives_percent_signs(capsys):
    """A bare `%` in a help text used to crash argparse (`compliance`, `hyperinf`); `%%` and `%(default)s` still work."""
    from dataclasses import dataclass, field

    from hf_ext.recipes._common import parse_recipe_args

    @dataclass
    class Args:
        share: float = field(default=0.06, metadata={"help": "Warmup (6% linear), 50%% off, default %(default)s."})

    with pytest.raises(SystemExit) as exc:
        parse_recipe_args((Args,), ["--help"])
    assert exc.value.code == 0
    assert "Warmup (6% linear), 50% off, default 0.06." in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("name", RECIPES)
def test_help(name):
    text = help_text(name)
    assert text.startswith("usage:") and "--output_dir" in text


# (flag, bad value(s)) -> the message must name the flag; checked for every recipe that has the flag.
BAD_VALUES = [
    ("--per_device_train_batch_size", ["0"]),
    ("--learning_rate", ["-0.1"]),
    ("--learning_rate", ["nan"]),
    ("--num_attention_heads", ["0"]),
    ("--max_new_tokens", ["0"]),
    ("--max_eval_blocks", ["0"]),
    ("--block_size", ["0"]),
    ("--max_steps", ["-3", "--num_train_epochs", "0"]),
    ("--model_name_or_path", ["./no/such/model"]),
    ("--tokenizer_name", ["./no/such/tokenizer"]),
    # refused late (by `set_seed`, the schedule or the optimizer) and without the flag's name before
    ("--seed", ["-1"]),
    ("--warmup_steps", ["nan"]),
    ("--adam_epsilon", ["-1"]),
    ("--adam_beta1", ["2"]),
    # the bounds themselves: numpy's seeds stop at 2**32 - 1, a beta of 1 never forgets, 0 would log never
    ("--seed", ["4294967296"]),
    ("--adam_beta2", ["1.0"]),
    ("--logging_steps", ["0"]),
]


@pytest.mark.parametrize("name", RECIPES)
def test_bad_values_fail_before_any_work(name, tmp_path):
    text = help_text(name)
    tried = 0
    for flag, values in BAD_VALUES:
        if f"{flag} " not in text:
            continue
        out = tmp_path / f"o{tried}"
        tried += 1
        with pytest.raises(ValueError, match=flag.lstrip("-")):
            recipe_main(name)([flag, *values, "--output_dir", str(out)])
        assert not out.exists(), f"{name} {flag}: output written before the arguments were checked"
    if "--hidden_size " in text and "--num_attention_heads " in text:
        with pytest.raises(ValueError, match="--hidden_size"):
            recipe_main(name)(["--hidden_size", "30", "--num_attention_heads", "4", "--output_dir", str(tmp_path / "h")])
        if name != "neuralgrok":  # its default GrokDecoder has no rotary embeddings: an odd head dimension is fine
            # audit lp12: the config refused it later (after the output folder was made), naming no flag
            with pytest.raises(ValueError, match="--hidden_size / --num_attention_heads = 36 / 4 = 9"):
                recipe_main(name)(["--hidden_size", "36", "--num_attention_heads", "4", "--output_dir", str(tmp_path / "r")])
            assert not (tmp_path / "r").exists()
    assert tried >= 1 or name in ("compliance", "cubic_newton"), f"{name}: no shared flag was checked"


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "openai-gpt"])
def test_odd_head_dimension_is_refused_only_for_a_rotary_warmup_architecture(architecture, small_tokenizer, tmp_path):
    """audit rv13: warmup picks its model with --architecture, not --model_type, and the check took every such recipe
    for a rotary Llama: GPT-2 and GPT-1 (learned positions) with a head dimension of 9 were refused, although they
    build and run. Llama (rotary) is still refused, naming both flags."""
    import torch
    from transformers import AutoModelForCausalLM

    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, model_config

    argv = ["--architecture", architecture, "--hidden_size", "36", "--num_attention_heads", "4"]
    argv += ["--intermediate_size", "144", "--output_dir", str(tmp_path / "w")]
    types = (WarmupRecipeArguments, WarmupTrainingArguments)
    if architecture == "llama":
        with pytest.raises(ValueError, match="--hidden_size / --num_attention_heads = 36 / 4 = 9 .* rotary"):
            parse_recipe_args(types, argv, resume="keep")
        return
    recipe, _ = parse_recipe_args(types, argv, resume="keep")
    model = AutoModelForCausalLM.from_config(model_config(recipe, small_tokenizer))
    assert model.config.n_embd // model.config.n_head == 9
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, len(small_tokenizer))


def test_vocab_size_of_the_byte_alphabet_plus_special_tokens_is_the_smallest_accepted():
    """256 bytes + 3 special tokens: 259 is what `build_tokenizer` accepts, 258 is refused naming the flag."""
    from hf_ext.data import build_tokenizer
    from hf_ext.recipes._common import check_vocab_size

    check_vocab_size(259, None)
    assert len(build_tokenizer(259)) <= 259
    with pytest.raises(ValueError, match=r"--vocab_size must be an int in \[259, 1048576\]"):
        check_vocab_size(258, None)
    check_vocab_size(100, "some/loaded-tokenizer")  # not used with a loaded tokenizer


def test_logging_steps_of_zero_set_after_parsing_is_refused(tmp_path):
    """transformers refuses `--logging_steps 0` only while building the arguments; a value set afterwards (by code
    that edits the parsed arguments) reaches the recipes' own check."""
    from transformers import TrainingArguments

    from hf_ext.recipes._common import validate_training_arguments

    args = TrainingArguments(output_dir=str(tmp_path / "o"), report_to="none", max_steps=4)
    args.logging_steps = 0
    with pytest.raises(ValueError, match="--logging_steps must be a positive number"):
        validate_training_arguments(args)


@pytest.mark.parametrize("name", ["pretrain", "grape", "layer_parallel", "warmup", "hyperinf", "neuralgrok"])
@pytest.mark.parametrize("kind", ["empty", "binary"])
def test_bad_train_file(name, kind, tmp_path):
    if "--train_file " not in help_text(name):
        pytest.skip(f"{name} has no --train_file")
    path = tmp_path / "data.txt"
    path.write_bytes(b"" if kind == "empty" else bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="--train_file"):
        recipe_main(name)(["--train_file", str(path), "--output_dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", [n for n in RECIPES if n not in ("compliance", "cubic_newton")])
def test_resume_without_a_checkpoint_is_refused_up_front(name, tmp_path):
    """Every training recipe accepts the bare flag (as transformers' example scripts do) and `True`, and refuses
    them before any work when `--output_dir` holds no complete checkpoint."""
    for form in (["--resume_from_checkpoint"], ["--resume_from_checkpoint", "True"]):
        out = tmp_path / "fresh"
        with pytest.raises(ValueError, match="--resume_from_checkpoint"):
            recipe_main(name)(["--output_dir", str(out), *form])
        assert not out.exists() or not any(out.iterdir())


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, caplog):
    from hf_ext.utils import normalize_resume_argv, resolve_resume_checkpoint

    assert normalize_resume_argv(["--resume_from_checkpoint", "--max_steps", "3"])[0] == "--resume_from_checkpoint=last"
    assert normalize_resume_argv(["--max_steps", "3", "--resume_from_checkpoint"])[-1] == "--resume_from_checkpoint=last"
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-6" / "trainer_state.json").unlink()  # a save killed half-way
    (tmp_path / "checkpoint-10").mkdir()
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_st')  # truncated
    with caplog.at_level("WARNING"):
        assert resolve_resume_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-4")
        assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-6" in caplog.text and "checkpoint-10" in caplog.text
    with pytest.raises(ValueError, match="interrupted"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-6"), str(tmp_path))
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    assert resolve_resume_checkpoint("false", str(tmp_path)) is None


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    from hf_ext.utils import atomic_open, atomic_write_json

    path = tmp_path / "results.json"
    atomic_write_json(str(path), {"ok": 1})
    with pytest.raises(RuntimeError), atomic_open(str(path)) as fh:
        fh.write('{"half": ')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


RECIPE_SOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hf_ext", "recipes")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_outputs_are_written_atomically(name):
    """Results, tables and plots go through `hf_ext.utils.io`'s atomic writers (temporary file, then rename), so a
    crash mid-write never leaves a half-written result file."""
    import ast

    tree = ast.parse(open(os.path.join(RECIPE_SOURCES, f"{name}.py"), encoding="utf-8").read())
    offenders = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("savefig", "write_text", "write_bytes", "to_json"):
            offenders.append(f"line {node.lineno}: .{func.attr}(...)")
        if isinstance(func, ast.Name) and func.id == "open":
            modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
            if any(isinstance(m, str) and ("w" in m or "a" in m) for m in modes):
                offenders.append(f"line {node.lineno}: open(..., {modes[0]!r})")
    assert not offenders, f"{name}: non-atomic writes {offenders}"


@pytest.mark.parametrize(
    "override, message",
    [("hiden_size=64", "does not have"), ("rms_norm_eps=NaN", "finite"), ("initializer_range=-1", "negative"),
     ("tie_word_embeddings=3", "wrong type"), ("num_hidden_layers=2.5", "wrong type")],
)  # fmt: skip
@pytest.mark.parametrize("model_type", ["llama", "fog"])
def test_config_overrides_are_checked_before_work(override, message, model_type, tmp_path):
    """Unknown keys and invalid values in --config_overrides used to be accepted (typos ignored, NaN loss)."""
    out = tmp_path / "o"
    with pytest.raises(ValueError, match=f"--config_overrides.*{message}"):
        recipe_main("pretrain")(["--model_type", model_type, "--config_overrides", override, "--output_dir", str(out)])
    assert not out.exists()


def test_corrupt_corpus_and_tokenizer_caches_rebuild_themselves(tmp_path, monkeypatch, caplog):
    """A truncated or empty corpus cache, or a broken cached tokenizer, is rebuilt (with a warning naming the file)
    instead of failing with a bare JSONDecodeError or silently yielding 0 documents."""
    from hf_ext.data import build_tokenizer, corpus, load_corpus

    records = corpus._load_records()  # the session's cache; rebuilding from the stdlib is slow, so count rebuilds
    builds = []
    monkeypatch.setattr(corpus, "build_corpus_records", lambda: builds.append(1) or [dict(r) for r in records])
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    n_docs = len(load_corpus("train"))
    assert builds == [1]
    cache = corpus._corpus_cache_file()
    assert cache.is_file() and str(cache).startswith(str(tmp_path))
    text = cache.read_text(encoding="utf-8")
    for broken in (text[: len(text) // 2], "", "\n", '{"text": "x"}\n'):
        cache.write_text(broken, encoding="utf-8")
        with caplog.at_level("WARNING"):
            assert len(load_corpus("train")) == n_docs
        assert str(cache) in caplog.text
        caplog.clear()
    assert len(builds) == 5
    tok = build_tokenizer(300)
    folder = next((tmp_path / "tokenizers").iterdir())
    (folder / "tokenizer.json").write_text('{"version": "1.0", "trunc', encoding="utf-8")
    with caplog.at_level("WARNING"):
        again = build_tokenizer(300)
    assert again.get_vocab() == tok.get_vocab() and "tokenizer" in caplog.text
    assert json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]


def test_recipes_log_a_diverged_step_loss_as_nan(tmp_path):
    """transformers' default `logging_nan_inf_filter=True` replaces a NaN step loss by the mean of the losses since the
    last log (0.0 when logging every step): the loss curve and train_loss of a diverged run looked finite. Recipes
    default it to False; passing it restores transformers' behaviour."""
    import json

    from transformers import TrainingArguments

    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.pretrain import main

    (args,) = parse_recipe_args((TrainingArguments,), ["--output_dir", str(tmp_path / "a")])
    assert args.logging_nan_inf_filter is False
    argv = ["--output_dir", str(tmp_path / "a"), "--logging_nan_inf_filter", "true"]
    (args,) = parse_recipe_args((TrainingArguments,), argv)
    assert args.logging_nan_inf_filter is True
    out = tmp_path / "nan"
    main(["--model_type", "llama", "--fp8_backend", "none", "--hidden_size", "32", "--intermediate_size", "64",
          "--num_hidden_layers", "1", "--num_attention_heads", "2", "--num_key_value_heads", "2", "--block_size", "32",
          "--per_device_train_batch_size", "4", "--max_eval_blocks", "2", "--max_new_tokens", "2", "--max_steps", "3",
          "--logging_steps", "1", "--learning_rate", "1e30", "--warmup_steps", "0", "--max_grad_norm", "0",
          "--output_dir", str(out)])  # fmt: skip
    results = json.loads((out / "pretrain_results.json").read_text())
    assert results["loss_curve"][-1] == [3, "NaN"] and results["train_loss"] == "NaN"


def test_flags_the_run_would_ignore_are_refused(tmp_path):
    """--save_steps / --eval_steps with their strategy at 'no' (the recipes' default, unlike transformers') and
    --validation_split_seed where no split is drawn were accepted and silently ignored."""
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments

    types = (ModelArguments, DataArguments, PretrainTrainingArguments)
    base = ["--output_dir", str(tmp_path / "out")]
    train = tmp_path / "train.txt"
    train.write_text("some text\n" * 20)
    valid = tmp_path / "valid.txt"
    valid.write_text("other text\n" * 5)
    for extra, match in [
        (["--save_steps", "1"], "--save_steps 1 is ignored: --save_strategy is 'no'"),
        (["--eval_steps", "5"], "--eval_steps 5 is ignored: --eval_strategy is 'no'"),
        (["--save_total_limit", "1"], "--save_total_limit 1 is ignored: --save_strategy is 'no'"),
        (["--save_strategy", "epoch", "--save_steps", "100"], "--save_steps 100 is ignored: --save_strategy is 'epoch'"),
        (["--eval_strategy", "epoch", "--eval_steps", "7"], "--eval_steps 7 is ignored: --eval_strategy is 'epoch'"),
        (["--validation_split_seed", "7"], "--validation_split_seed 7 is ignored: the embedded corpus"),
        (["--validation_split_seed", "7", "--train_file", str(train), "--validation_file", str(valid)],
         "--validation_split_seed 7 is ignored: --validation_file"),
        # accepted and ignored before: the length of the run is --max_steps, no recipe predicts, the Trainer reads
        # --eval_strategy, and a negative --logging_steps never logs (an empty loss curve)
        (["--num_train_epochs", "7"], "--num_train_epochs 7 is ignored: --max_steps 400"),
        (["--do_predict", "true"], "--do_predict is ignored"),
        (["--do_eval", "true"], "--do_eval is ignored.*--eval_strategy"),
        (["--logging_steps", "-3"], "--logging_steps must be a positive number"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            parse_recipe_args(types, [*base, *extra])
    parse_recipe_args(types, [*base, "--max_steps", "-1", "--num_train_epochs", "2"])
    parse_recipe_args(types, [*base, "--eval_strategy", "steps", "--eval_steps", "5"])  # sets do_eval itself
    parse_recipe_args(types, [*base, "--save_strategy", "steps", "--save_steps", "1"])
    parse_recipe_args(types, [*base, "--validation_split_seed", "7", "--train_file", str(train)])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe", ["warmup", "metadata_pretrain", "neuralgrok", "grape"])
def test_step_only_recipes_do_not_offer_max_steps_minus_one(tmp_path, recipe):
    """rs23 F3: the shared --max_steps / --num_train_epochs errors told users of the step-only recipes to pass
    `--max_steps -1` (train for --num_train_epochs), which each of them then refused with its own message."""
    main = importlib.import_module(f"hf_ext.recipes.{recipe}").main
    out = ["--output_dir", str(tmp_path / "out")]
    for argv, match in [
        (["--max_steps", "0"], r"--max_steps must be a positive number of optimizer steps, got 0: this recipe trains"),
        (["--max_steps", "-1", "--num_train_epochs", "1"], r"got -1: this recipe trains a fixed number of steps .*"
         r"set --max_steps N\."),
        (["--max_steps", "4", "--num_train_epochs", "2"], r"--num_train_epochs 2 is ignored: --max_steps 4 sets the "
         r"length of the run, and this recipe trains a fixed number of steps .*Drop --num_train_epochs"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match) as excinfo:
            main([*argv, *out])
        assert "-1" not in str(excinfo.value).replace("got -1", "")
    assert not (tmp_path / "out").exists()


def test_epoch_based_recipes_keep_the_max_steps_minus_one_advice(tmp_path):
    """The recipes that train for --num_train_epochs with --max_steps -1 still say so (rs23 F3's other side)."""
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments

    types, out = (ModelArguments, DataArguments, PretrainTrainingArguments), ["--output_dir", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"\(or -1 to train for --num_train_epochs\), got 0\."):
        parse_recipe_args(types, [*out, "--max_steps", "0"])
    with pytest.raises(ValueError, match="Drop it, or pass --max_steps -1 with it to train for that many epochs"):
        parse_recipe_args(types, [*out, "--max_steps", "4", "--num_train_epochs", "2"])


def test_clear_previous_results_removes_the_temp_files_of_killed_atomic_writes(tmp_path):
    """A kill during an atomic write (results JSON, PNG) left its hidden `.<name>.<random>.tmp` beside the results;
    they are removed with the results, and also when resuming; other hidden files stay."""
    from hf_ext.recipes._common import clear_previous_results

    stale = [tmp_path / ".kurtosis.png.k2j_4x.tmp", tmp_path / ".pretrain_results.json.abc.tmp"]
    keep = [tmp_path / ".other.json.abc.tmp", tmp_path / "kurtosis.png.tmp"]
    for path in [*stale, *keep]:
        path.write_text("x")
    clear_previous_results(str(tmp_path), ["kurtosis.png", "pretrain_results.json"], resuming=True)
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in keep)


@pytest.mark.parametrize("name", RECIPES)
def test_lr_scheduler_kwargs_must_be_a_json_object_of_the_schedule_options(name, tmp_path):
    """Every recipe with --lr_scheduler_kwargs: a value that is no JSON object, or an option the schedule does not take,
    is refused before any work, naming the flag (it failed when the schedule was built, after the data was loaded:
    "argument after ** must be a mapping, not str", "unexpected keyword argument")."""
    if "--lr_scheduler_kwargs " not in help_text(name):
        pytest.skip(f"{name} has no --lr_scheduler_kwargs")
    for i, (value, match) in enumerate(
        [
            ("not json", r"^--lr_scheduler_kwargs must be a JSON object.*got 'not json'"),
            ("[1, 2]", r"^--lr_scheduler_kwargs must be a JSON object.*got '\[1, 2\]'"),
            ("{bad", r"^--lr_scheduler_kwargs must be a JSON object.*got '\{bad' \(Expecting property name"),
            ('{"no_such_option": 1}', r"^--lr_scheduler_kwargs 'no_such_option' is not an option of --lr_sch"),
        ]
    ):
        out = tmp_path / f"o{i}"
        with pytest.raises(ValueError, match=match):
            recipe_main(name)(["--lr_scheduler_kwargs", value, "--output_dir", str(out)])
        assert not out.exists(), f"{name} {value}: output written before the arguments were checked"
