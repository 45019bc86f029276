"""Defaults the docs quote in prose ("`--max_ppl_increase` (default 0.25", "`--fp8_monitor_steps`, default 25") equal
the recipes' real argparse defaults, and the library defaults the docs quote equal the code's.

`tests/test_docs_commands.py` checks that documented flags exist and that documented commands parse; it does not read
the default a sentence claims. A user who leaves a flag out relies on that number, so a default changed in the code
(or mistyped in the docs) fails here, naming the doc line.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re

import pytest

# which recipe a doc's quoted flag defaults describe (README: the shared data flags, read from `pretrain`)
_DOC_RECIPES = {
    "README.md": ("pretrain", "layer_parallel", "metadata_pretrain", "warmup"),
    "docs/fog.md": ("pretrain",),
    "docs/fp8.md": ("pretrain",),
    "docs/layer_parallel.md": ("layer_parallel",),
    "docs/federated.md": ("federated",),
    "docs/neuralgrok.md": ("neuralgrok",),
    "docs/optim.md": ("warmup", "cubic_newton"),
}
# "`--flag` (default V", "`--flag`, default V", "`--flag` defaults to V" (V: a number or a `code` value)
_QUOTED_DEFAULT = re.compile(r"`(--[a-z0-9_]+)`,? \(?default(?:s to)? (`[^`]+`|-?[0-9][0-9.e+-]*)")
# flags whose argparse default is None and that the recipe resolves from a module constant (doc value -> resolved)
_RESOLVED = {("pretrain", "--intermediate_size"): ("hf_ext.recipes.pretrain", "DEFAULT_INTERMEDIATE_SIZE")}


def _parser(root: str, name: str):
    """The parser `scripts/<name>.py` builds, captured when it starts parsing: test_docs_commands.py's `parser_of`."""
    global _docs_commands
    if _docs_commands is None:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_docs_commands.py")
        spec = importlib.util.spec_from_file_location("_docs_commands_for_dt41", path)
        _docs_commands = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_docs_commands)
    return _docs_commands.parser_of(root, name)


_docs_commands = None


def _default(root: str, recipe: str, flag: str):
    action = _parser(root, recipe)._option_string_actions.get(flag)
    if action is None:
        return _MISSING
    if action.default is None and (recipe, flag) in _RESOLVED:
        import importlib

        module, constant = _RESOLVED[(recipe, flag)]
        return getattr(importlib.import_module(module), constant)
    return action.default


_MISSING = object()


def _same(quoted: str, actual) -> bool:
    if quoted.startswith("`"):
        return str(getattr(actual, "value", actual)) == quoted.strip("`")
    try:
        return actual is not None and not isinstance(actual, bool) and float(actual) == float(quoted.rstrip("."))
    except (TypeError, ValueError):
        return False


def quoted_defaults(root: str):
    """(doc:line, recipe candidates, flag, quoted value) for every flag default the docs quote in prose."""
    for doc, recipes in _DOC_RECIPES.items():
        with open(os.path.join(root, doc), encoding="utf-8") as f:
            text = f.read()
        flat = re.sub(r"\s*\n\s*", " ", text)  # a sentence wrapped over lines
        # map offsets of the flattened text back to line numbers
        lines, offset, starts = text.split("\n"), 0, []
        for line in lines:
            starts.append(offset)
            offset += len(line.strip()) + 1
        for match in _QUOTED_DEFAULT.finditer(flat):
            lineno = sum(1 for s in starts if s <= match.start())
            yield f"{doc}:~{lineno}", recipes, match.group(1), match.group(2)


def test_the_extraction_finds_the_quoted_defaults(repo_root):
    found = {(where.split(":")[0], flag) for where, _, flag, _ in quoted_defaults(repo_root)}
    assert {
        ("docs/layer_parallel.md", "--max_ppl_increase"),
        ("docs/fog.md", "--fp8_monitor_steps"),
        ("docs/fog.md", "--intermediate_size"),
        ("README.md", "--validation_split_seed"),
        ("docs/neuralgrok.md", "--strong_weight_decay"),  # wrapped over two lines in the doc
    } <= found


def test_every_quoted_flag_default_is_the_recipes_default(repo_root):
    problems = []
    for where, recipes, flag, quoted in quoted_defaults(repo_root):
        actual = {recipe: _default(repo_root, recipe, flag) for recipe in recipes}
        actual = {recipe: value for recipe, value in actual.items() if value is not _MISSING}
        if not actual:
            problems.append(f"{where}: {flag} is not a flag of {', '.join(recipes)}")
        elif not all(_same(quoted, value) for value in actual.values()):
            problems.append(f"{where}: the docs say {flag} defaults to {quoted}, the code has {actual}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("quoted", "actual", "same"),
    [("0.25", 0.25, True), ("0.25", 0.5, False), ("`acc`", "acc", True), ("`acc`", "acc_norm", False),
     ("25", None, False), ("1e-2", 0.01, True), ("0", False, False)],
)  # fmt: skip
def test_the_comparison_catches_a_wrong_default(quoted, actual, same):
    assert _same(quoted, actual) is same


# library defaults quoted in the docs' prose and tables
def test_documented_library_defaults(tmp_path):
    from hf_ext.data import build_tokenizer
    from hf_ext.fp8 import Fp8HealthCallback
    from hf_ext.models.fog import FogConfig
    from hf_ext.neuralgrok import GrokkingCallback, NeuralGrokConfig
    from hf_ext.optim import WarmupFreeTrainingArguments, get_trapezoid_schedule
    from hf_ext.recipes.pretrain import DEFAULT_INTERMEDIATE_SIZE

    # README: build_tokenizer(vocab_size=4096)
    assert inspect.signature(build_tokenizer).parameters["vocab_size"].default == 4096
    # docs/fog.md: --intermediate_size 384 is the SwiGLU width; the xIELU MLP gets 576 at the default; 100 -> 160
    assert FogConfig.fog(swiglu_intermediate_size=DEFAULT_INTERMEDIATE_SIZE).intermediate_size == 576
    assert FogConfig.fog(swiglu_intermediate_size=100).intermediate_size == 160
    # docs/fog.md config-field table
    fog, llama = FogConfig.fog(), FogConfig.llama_baseline()
    assert (fog.pre_norm, fog.post_norm, llama.pre_norm, llama.post_norm) == (False, True, True, False)
    assert (fog.qk_norm, llama.qk_norm, fog.freeze_qk_gain, fog.qk_norm_init) == ("rms", "none", True, 1.0)
    assert (fog.softmax_scale, llama.softmax_scale, fog.input_upscale, llama.input_upscale) == (
        0.125,
        None,
        50.0,
        None,
    )
    assert (fog.final_layernorm, llama.final_layernorm, fog.hidden_act, llama.hidden_act) == (
        False, True, "xielu", "swiglu"
    )  # fmt: skip
    assert (fog.xielu_alpha_p_init, fog.xielu_alpha_n_init, fog.xielu_beta, fog.xielu_eps) == (0.8, 0.8, 0.5, -1e-6)
    assert fog.rope_parameters["rope_theta"] == 500000.0
    # model card: thresholds 10x / 100, post-activation MLP output exempt from the absolute level
    health = inspect.signature(Fp8HealthCallback.__init__).parameters
    assert health["relative_threshold"].default == 10.0 and health["absolute_threshold"].default == 100.0
    assert health["absolute_exempt_sites"].default == ("mlp_post_act",)
    # docs/neuralgrok.md options table and reference defaults
    config = NeuralGrokConfig(output_dir=str(tmp_path), report_to=[])
    assert (config.gradient_transform, list(config.amplifier_hidden_dims), config.amplifier_c) == (
        "neuralgrok", [32, 32], 1.0
    )  # fmt: skip
    assert (config.amplifier_clip_norm, config.outer_every, config.outer_gradient) == (1.0, 4, "recompute")
    assert (config.meta_learning_rate, config.meta_weight_decay, config.virtual_lr) == (1e-4, 1e-3, None)
    assert (config.grokfast_alpha, config.grokfast_lamb, config.grokfast_window, config.grokfast_warmup) == (
        0.98, None, 100, True
    )  # fmt: skip
    assert (config.per_device_train_batch_size, config.learning_rate, config.adam_beta2) == (512, 1e-3, 0.98)
    assert (config.weight_decay, config.warmup_steps, config.max_grad_norm, config.logging_steps) == (
        1e-3,
        10,
        0.0,
        10,
    )
    callback = inspect.signature(GrokkingCallback.__init__).parameters
    assert (callback["target"].default, callback["metric_key"].default) == (0.95, "eval_accuracy")
    # docs/optim.md: WSD with cooldown_fraction 0.5; weight decay 1.0 for lion_ar / rotational_lion, 0.01 for the
    # rotational AdamW / SGDM, transformers' 0 otherwise; get_trapezoid_schedule cools down over the last 50%
    args = WarmupFreeTrainingArguments(output_dir=str(tmp_path), report_to=[])
    assert (str(args.lr_scheduler_type.value), args.cooldown_fraction) == ("warmup_stable_decay", 0.5)
    expected = {"lion_ar": 1.0, "rotational_lion": 1.0, "rotational_adamw": 0.01, "rotational_sgdm": 0.01, "lion": 0.0}
    for name, weight_decay in expected.items():
        made = WarmupFreeTrainingArguments(output_dir=str(tmp_path), report_to=[], normalized_optimizer=name)
        assert made.weight_decay == weight_decay, name
    assert inspect.signature(get_trapezoid_schedule).parameters["cooldown_fraction"].default == 0.5


def test_readme_names_the_extras_make_test_installs(repo_root):
    """The quick start's `make test` line names every extra the Makefile's test set-up installs (it used to say "the
    dev extra" while `make test` also installs flower and datatrove, whose test modules import them at the top), and
    the installation section gives the same install command for running the suite by hand."""
    with open(os.path.join(repo_root, "Makefile"), encoding="utf-8") as f:
        makefile = f.read()
    extras = re.search(r"\$\(VENV\)/\.installed-dev:.*?install -e \"\.\[([a-z,]+)\]\"", makefile, re.S).group(1)
    with open(os.path.join(repo_root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    line = next(line for line in readme.splitlines() if line.startswith("make test "))
    missing = [extra for extra in extras.split(",") if extra not in line]
    assert not missing, f"README's `make test` line does not name the extras {missing} the Makefile installs: {line}"
    assert f'".[{extras}]"' in readme, f"README does not give the test set-up's install command .[{extras}]"
