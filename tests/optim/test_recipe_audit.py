"""Audit of the warmup and cubic Newton recipes and their trainers: exact resume (checkpoint copied to another folder,
parameters, optimizer state and logs bit for bit), resumed update-metric curves, recipe flags that were silently
ignored, bad inputs refused before any work naming the flag, and diverged runs reported as such."""

import json
import shutil

import pytest
import torch
from torch import nn

from hf_ext.optim import (
    CubicNewton,
    CubicNewtonTrainer,
    CubicNewtonTrainingArguments,
    UpdateMetricsCallback,
    WarmupFreeTrainer,
    WarmupFreeTrainingArguments,
)

from .test_cubic_trainer import TinyLM

_RUN_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss")


def _assert_same(a, b, path="state"):
    """Equal bit for bit: tensors (values, dtype, shape), containers, scalars."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path}: max diff {float((a.double() - b.double()).abs().max())}"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _logs(trainer):
    """The log history without the timing entries, as comparable text (NaN equals NaN, key order ignored)."""
    return _text([{k: v for k, v in r.items() if k not in _RUN_KEYS} for r in trainer.state.log_history])


def _text(rows):
    return json.dumps(rows, sort_keys=True)


# ------------------------------------------------------------------------------------------------ exact resume
def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(cfg)


def _lm_data(n=24, t=16):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 64, (t,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def _cubic_data(n=24):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(0, 16, (8,), generator=g)), "labels": (ids * 3 + 1) % 16}
            for _ in range(n)]  # fmt: skip


def _lion_ar_snr(out, callbacks=()):
    args = WarmupFreeTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, learning_rate=1e-3, weight_decay=1.0, max_steps=4,
        use_cpu=True, report_to="none", save_strategy="steps", save_steps=2, logging_steps=1, warmup_steps=2, seed=0,
        data_seed=0, disable_tqdm=True, normalized_optimizer="lion_ar", snr_correction=True,
    )  # fmt: skip
    return WarmupFreeTrainer(model=_llama(), args=args, train_dataset=_lm_data(), callbacks=list(callbacks))


def _cubic_dense(out, callbacks=()):
    args = CubicNewtonTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=4, use_cpu=True, report_to="none",
        logging_steps=1, save_strategy="steps", save_steps=2, seed=0, cubic_M=5.0, cubic_momentum="hessian_corrected",
        cubic_alpha=0.5, cubic_beta=0.5, cubic_hessian="dense", cubic_solver="exact", disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return CubicNewtonTrainer(model=TinyLM(), args=args, train_dataset=_cubic_data())


def _cubic_window(out, callbacks=()):
    args = CubicNewtonTrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=6, use_cpu=True, report_to="none",
        logging_steps=1, save_strategy="steps", save_steps=3, seed=0, cubic_M=5.0, cubic_momentum="ema",
        cubic_alpha=0.5, cubic_beta=0.5, cubic_hessian="window", cubic_hessian_window=3, cubic_krylov_dim=4,
        disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return CubicNewtonTrainer(model=TinyLM(), args=args, train_dataset=_cubic_data())


@pytest.mark.parametrize(
    "make", [_lion_ar_snr, _cubic_dense, _cubic_window], ids=["lion_ar_snr", "cubic_dense_hessian", "cubic_window"]
)
def test_resume_from_a_moved_checkpoint_is_bit_exact(tmp_path, make):
    """4 steps straight vs 2 + resume from checkpoint-2 copied to another folder + 2: parameters, the whole optimizer
    state (LionAR's norms and SNR EMAs; cubic Newton's gradient/Hessian momentum and previous point), the scheduler
    and the log history are identical. A dense Hessian estimate used to be kept in torch.func.hessian's transposed
    layout and restored row-major, so the resumed run drifted by an ulp from its first step."""
    full = make(tmp_path / "full")
    full.train()
    moved = tmp_path / "elsewhere" / "ckpt"
    half = full.args.save_steps
    shutil.copytree(tmp_path / "full" / f"checkpoint-{int(half)}", moved)
    resumed = make(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(moved))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        _assert_same(a.detach(), b.detach(), name)
    _assert_same(full.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    _assert_same(full.lr_scheduler.state_dict(), resumed.lr_scheduler.state_dict(), "scheduler")
    assert _logs(full) == _logs(resumed)


def test_cubic_newton_dense_state_round_trip_is_bit_exact(tmp_path):
    """The optimizer alone: 4 steps vs 2 + save/load through safetensors + JSON + 2, every step's stats equal."""
    from hf_ext.optim.serialization import load_optimizer_state, save_optimizer_state

    A = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))

    def closure(k):
        return lambda: lambda x: (x @ A).tanh().pow(2).sum() * (1 + 0.1 * k) + (x**4).sum()

    def run(steps, start=0, w0=None, ckpt=None):
        w = nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) if w0 is None else w0.clone())
        opt = CubicNewton([w], M=5.0, momentum="hessian_corrected", alpha=0.5, beta=0.5, hessian="dense")
        if ckpt is not None:
            load_optimizer_state(opt, ckpt)
        stats = []
        for k in range(start, start + steps):
            opt.step(closure(k))
            stats.append(opt.last_stats)
        return w, opt, stats

    w_full, opt_full, stats_full = run(4)
    w_half, opt_half, _ = run(2)
    save_optimizer_state(opt_half, str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    w_res, opt_res, stats_res = run(2, start=2, w0=w_half.detach(), ckpt=str(tmp_path / "b"))
    assert stats_res == stats_full[2:]
    _assert_same(w_full.detach(), w_res.detach(), "w")
    _assert_same(opt_full.state_dict(), opt_res.state_dict(), "optimizer")


def test_cubic_newton_window_state_round_trip_is_bit_exact_once_rebuilt(tmp_path):
    """hessian="window": the window's points and samples go into the state dict; after loading, `rebuild_window`
    turns the samples back into loss functions and the continuation equals the uninterrupted run. Without the
    rebuild the optimizer warns that the window refills (and the continuation differs). A sample's tensors may share
    memory (labels = input_ids), which safetensors refuses: the saved window holds copies. A loaded window that is saved
    again before the rebuild is kept."""
    from hf_ext.optim.serialization import load_optimizer_state, save_optimizer_state

    A = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))

    def loss_of(sample):
        k = int(sample["input_ids"])
        return lambda x: (x @ A).tanh().pow(2).sum() * (1 + 0.3 * k) + (x**4).sum() + 0.1 * k * x.sum()

    def batch(k):
        ids = torch.tensor(k)
        return {"input_ids": ids, "labels": ids}  # one tensor twice, as causal-LM collators do

    def run(steps, start=0, w0=None, ckpt=None):
        w = nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)) if w0 is None else w0.clone())
        opt = CubicNewton([w], M=5.0, momentum="ema", alpha=0.5, beta=0.5, hessian="window", hessian_window=3,
                          solver="lanczos", krylov_dim=6)  # fmt: skip
        if ckpt is not None:
            load_optimizer_state(opt, ckpt)
            assert opt.rebuild_window(loss_of) == 3
        stats = []
        for k in range(start, start + steps):
            opt.set_closure(lambda k=k: loss_of(batch(k)), sample=batch(k))
            opt.step()
            stats.append(opt.last_stats)
        return w, opt, stats

    w_full, opt_full, stats_full = run(7)
    w_half, opt_half, _ = run(4)
    save_optimizer_state(opt_half, str(tmp_path / "a"))
    assert len(opt_half.state_dict()["window"]["points"]) == 3
    # loaded, saved again before any rebuild, loaded from there: the window is still whole
    w = nn.Parameter(w_half.detach().clone())
    opt = CubicNewton([w], M=5.0, momentum="ema", alpha=0.5, beta=0.5, hessian="window", hessian_window=3,
                      solver="lanczos", krylov_dim=6)  # fmt: skip
    load_optimizer_state(opt, str(tmp_path / "a"))
    save_optimizer_state(opt, str(tmp_path / "b"))
    w_res, opt_res, stats_res = run(3, start=4, w0=w_half.detach(), ckpt=str(tmp_path / "b"))
    assert stats_res == stats_full[4:]
    _assert_same(w_full.detach(), w_res.detach(), "w")
    _assert_same(opt_full.state_dict(), opt_res.state_dict(), "optimizer")

    w = nn.Parameter(w_half.detach().clone())
    opt = CubicNewton([w], M=5.0, momentum="ema", alpha=0.5, beta=0.5, hessian="window", hessian_window=3,
                      solver="lanczos", krylov_dim=6)  # fmt: skip
    load_optimizer_state(opt, str(tmp_path / "a"))
    with pytest.raises(TypeError, match="make_loss"):
        opt.rebuild_window(None)
    with pytest.warns(UserWarning, match="rebuild_window"):
        opt.step(lambda: loss_of(batch(4)))
    assert opt.last_stats != stats_full[4]
    # a state saved without its window (older versions) says so when loaded
    old_format = opt_half.state_dict()
    del old_format["window"]
    with pytest.warns(UserWarning, match="holds no window"):
        opt.load_state_dict(old_format)


def test_update_metrics_history_covers_the_whole_run_after_resume(tmp_path):
    """`UpdateMetricsCallback.history` (what the warmup recipe reports as `update_metrics` and plots) used to hold
    only the steps after the checkpoint when a run was resumed."""
    full_cb = UpdateMetricsCallback(every_n_steps=1, plot_path=None)
    full = _lion_ar_snr(tmp_path / "full", [full_cb])
    full.train()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "moved")
    res_cb = UpdateMetricsCallback(every_n_steps=1, plot_path=None)
    resumed = _lion_ar_snr(tmp_path / "resumed", [res_cb])
    resumed.train(resume_from_checkpoint=str(tmp_path / "moved"))
    assert [r["step"] for r in full_cb.history] == [1, 2, 3, 4]
    assert _text(res_cb.history) == _text(full_cb.history)
    assert _logs(full) == _logs(resumed)


# ------------------------------------------------------------------------------------------------ warmup recipe
def _tiny_warmup(out, *extra, arms="adamw_no_warmup,lion_ar_no_warmup"):
    return ["--max_steps", "1", "--arms", arms, "--hidden_size", "32", "--intermediate_size", "64",
            "--vocab_size", "512", "--block_size", "16", "--max_eval_blocks", "2", "--per_device_train_batch_size", "2",
            "--metrics_every", "1", "--output_dir", str(out), "--disable_tqdm", "true", "--use_cpu", "true",
            "--report_to", "none", *extra]  # fmt: skip


def test_warmup_recipe_honours_the_lion_flags():
    """--lion_beta1/--lion_beta2/--nesterov/--inverse_bias_correction used to be overwritten by the LionAR arms."""
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, arm_arguments

    argv = ["--lion_beta1", "0.9", "--lion_beta2", "0.99", "--nesterov", "false", "--inverse_bias_correction", "false"]
    recipe, args = parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), argv)
    arm = arm_arguments("lion_ar_no_warmup", recipe, args)
    assert (arm.lion_beta1, arm.lion_beta2, arm.nesterov, arm.inverse_bias_correction) == (0.9, 0.99, False, False)
    recipe, args = parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), [])
    arm = arm_arguments("lion_ar_warmup", recipe, args)  # the defaults stay the paper's warmup-free recipe
    assert (arm.lion_beta1, arm.lion_beta2, arm.nesterov, arm.inverse_bias_correction) == (0.98, 0.98, True, True)


def test_warmup_recipe_arms_get_no_ignored_option_warning(caplog):
    """The arms share one argument set: the recipe's AdamW beta2 (0.95) must not reach the Lion arms as an "ignored"
    option (the trainer warns about those), but it still sets their rotation angle; Lion betas likewise for AdamW."""
    import logging

    from hf_ext.optim.normalized import equilibrium_angle
    from hf_ext.optim.warmup_trainer import check_normalized_optimizer_arguments
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.warmup import ARMS, WarmupRecipeArguments, WarmupTrainingArguments, arm_arguments

    recipe, args = parse_recipe_args((WarmupRecipeArguments, WarmupTrainingArguments), ["--lion_beta1", "0.9"])
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
        arms = {arm: arm_arguments(arm, recipe, args) for arm in ARMS}
        for arm_args in arms.values():
            check_normalized_optimizer_arguments(arm_args)
    assert not [r for r in caplog.records if "is ignored" in r.getMessage()]
    assert arms["adamw_warmup"].adam_beta2 == 0.95 and arms["lion_ar_warmup"].lion_beta1 == 0.9
    assert arms["lion_ar_warmup"].rotation_angle == equilibrium_angle("adamw", 1e-2, 0.1, (0.9, 0.95))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):  # the library still warns a user
        check_normalized_optimizer_arguments(args.__class__(output_dir="o", normalized_optimizer="lion_ar",
                                                            weight_decay=0.1, adam_beta2=0.9))  # fmt: skip
    assert any("--adam_beta2=0.9 is ignored" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "extra, arms, match",
    [
        (["--normalized_optimizer", "lion"], "adamw_no_warmup", "--normalized_optimizer .*--arms"),
        (["--warmup_steps", "5"], "adamw_no_warmup", "--warmup_steps .*--warmup_fraction"),
        (["--learning_rate", "0"], None, "--learning_rate"),
        (["--lion_lr_ratio", "nan"], None, "--lion_lr_ratio"),
        (["--rotation_angle", "-0.1"], None, "--rotation_angle"),
        (["--weight_decay", "0"], None, "--weight_decay > 0"),
        (["--adam_beta2", "nan"], "lion_ar_no_warmup,adamw_no_warmup", "--adam_beta2"),
        (["--adam_epsilon", "-1"], "lion_ar_no_warmup,adamw_no_warmup", "--adam_epsilon"),
        (["--metrics_every", "0"], None, "--metrics_every"),
        (["--max_steps", "20", "--cooldown_fraction", "0.97", "--warmup_fraction", "0.1"],
         "adamw_no_warmup,adamw_warmup", "arm adamw_warmup: .*--cooldown_fraction"),
    ],
)  # fmt: skip
def test_warmup_recipe_refuses_bad_inputs_before_any_work(tmp_path, extra, arms, match):
    """Each used to pass validation, train the earlier arms and then fail (or silently be ignored)."""
    from hf_ext.recipes.warmup import main

    out = tmp_path / "out"
    argv = _tiny_warmup(out, *extra, **({"arms": arms} if arms else {}))
    with pytest.raises(ValueError, match=match):
        main(argv)
    assert not out.exists()


def test_warmup_recipe_names_no_text_column_flag_it_lacks(tmp_path):
    """warmup reads the `text` column and has no --text_column; its error told the user to pass that flag, which the
    recipe then refused as unknown."""
    import json

    from hf_ext.recipes.warmup import main

    data = tmp_path / "content.jsonl"
    data.write_text("".join(json.dumps({"content": f"document {i}"}) + "\n" for i in range(20)))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no column 'text'") as err:
        main(_tiny_warmup(out, "--train_file", str(data)))
    assert "--text_column" not in str(err.value) and "rename the file's text column" in str(err.value)
    lines = tmp_path / "lines.txt"  # one document per line: a single paragraph, so no held-out split
    lines.write_text("".join(f"document {i}\n" for i in range(20)))
    with pytest.raises(ValueError, match="too few to hold out") as err:
        main(_tiny_warmup(out, "--train_file", str(lines)))
    assert "--validation_file" not in str(err.value) and "separates them by blank lines" in str(err.value)


# ------------------------------------------------------------------------------------------------ cubic recipe
# (no --corpus_oracle_budget: the logistic-only runs below would refuse it as a flag they never read)
_TINY_CUBIC = ["--batch_sizes", "1", "--oracle_budget", "8", "--n_samples", "50",
               "--n_features", "14", "--eval_points", "2"]  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--cubic_M", "nan"], "--cubic_M"),
        (["--cubic_M", "1e9"], "--cubic_M"),
        (["--sgd_lr", "nan", "--methods", "sgd"], "--sgd_lr"),
        (["--adam_lr", "nan"], "--adam_lr"),
        (["--regularizer", "nan", "--methods", "sgd"], "--regularizer"),
        (["--eval_points", "0"], "--eval_points"),
        (["--n_features", "10"], "--n_features"),
        (["--krylov_dim", "0"], "--krylov_dim"),
        (["--corpus_hidden", "0", "--problems", "corpus", "--methods", "sgd"], "--corpus_hidden"),
        (["--corpus_vocab", "0", "--problems", "logistic,corpus", "--methods", "sgd"], "--corpus_vocab"),
        (["--batch_sizes", "1,64", "--oracle_budget", "100"], "--oracle_budget .*one step"),  # a cubic step: 128
        # each repeat ran (and was plotted) again
        (["--methods", "sgd,sgd"], "--methods='sgd,sgd' repeats an entry"),
        (["--batch_sizes", "1,1"], "--batch_sizes='1,1' repeats an entry"),
        (["--problems", "logistic,logistic"], "--problems='logistic,logistic' repeats an entry"),
    ],
)
def test_cubic_recipe_refuses_bad_inputs_before_any_work(tmp_path, extra, match):
    """Each used to fail after the earlier methods/problems had run, name an internal keyword, or run to the end
    (a NaN learning rate reported the starting point as the final loss)."""
    from hf_ext.recipes.cubic_newton import main

    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main([*_TINY_CUBIC, "--problems", "logistic", *extra, "--output_dir", str(out)])
    assert not out.exists()


def test_cubic_recipe_reports_a_diverged_run(tmp_path):
    """A run whose iterate becomes non-finite used to stop silently; its last reported row (the 'final' loss of the
    results file and of the printout) was an earlier finite evaluation, here the starting point."""
    from hf_ext.recipes.cubic_newton import main

    argv = [*_TINY_CUBIC, "--problems", "logistic", "--methods", "sgd,adam", "--sgd_lr", "1e306", "--oracle_budget",
            "20", "--output_dir", str(tmp_path)]  # fmt: skip
    res = {r["method"]: r for r in main(argv)}
    assert res["sgd"]["diverged_at_step"] == 1
    assert res["sgd"]["rows"][-1]["step"] == 1 and res["sgd"]["rows"][-1]["loss"] != res["sgd"]["rows"][0]["loss"]
    assert res["adam"]["diverged_at_step"] is None and res["adam"]["rows"][-1]["step"] == 20
    def refuse(token):  # strict JSON (jq, JavaScript): the diverged NaN loss is the string "NaN", not a bare token
        raise ValueError(f"non-standard JSON token {token}")

    saved = json.loads((tmp_path / "cubic_newton_results.json").read_text(), parse_constant=refuse)
    assert [r["diverged_at_step"] for r in saved] == [1, None]
    assert saved[0]["rows"][-1]["loss"] == "NaN"


# ------------------------------------------------------------------------------------------------ trainer arguments
@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(cubic_alpha=0.0), "alpha.*--cubic_x"),
        (dict(cubic_krylov_dim=0), "krylov_dim"),
        (dict(cubic_convention="M/2"), "cubic_convention"),
        (dict(cubic_solver="exact", cubic_hessian="fresh"), "hessian='dense'"),
        (dict(cubic_M=1e9), "M_max.*--cubic_M"),
        (dict(learning_rate=0.0), "--learning_rate"),
    ],
)
def test_cubic_trainer_arguments_check_the_optimizer_options(tmp_path, kw, match):
    """They used to be accepted by the arguments and the trainer and to fail only inside `train()`."""
    with pytest.raises(ValueError, match=match):
        CubicNewtonTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize("kw, match", [(dict(rotation_angle=-0.1), "--rotation_angle"),
                                       (dict(update_norm_decay=1.0), "--update_norm_decay")])  # fmt: skip
def test_warmup_free_arguments_check_the_rotation_options(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        WarmupFreeTrainingArguments(output_dir=str(tmp_path / "o"), use_cpu=True, report_to="none", **kw)


@pytest.mark.parametrize(
    "optimizer, option, value",
    [
        ("lion_a", "rotation_angle", 0.05),
        ("rotational_adamw", "snr_correction", True),
        ("adamw", "update_norm_decay", 0.5),
        ("lion", "snr_correction", True),
        ("lion_a", "zero_mean", False),
        ("lion_a", "per_neuron", False),
        ("adamw", "nesterov", False),
        ("rotational_sgdm", "inverse_bias_correction", False),
    ],
)
def test_every_option_the_chosen_optimizer_ignores_is_warned_about(caplog, optimizer, option, value):
    """Only the betas, eps and momentum used to be checked: `--snr_correction true` with rotational_adamw trained
    without it, silently."""
    import logging

    from hf_ext.optim import WarmupFreeTrainingArguments
    from hf_ext.optim.warmup_trainer import check_normalized_optimizer_arguments

    args = WarmupFreeTrainingArguments(output_dir="o", normalized_optimizer=optimizer, weight_decay=0.1,
                                       **{option: value})  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
        check_normalized_optimizer_arguments(args)
    assert any(f"--{option}={value} is ignored" in r.getMessage() for r in caplog.records)


def test_no_option_the_chosen_optimizer_reads_is_warned_about(caplog):
    """For every optimizer and option: a warning "is ignored" exactly when the optimizer's keywords do not change
    with the option. `_OPTION_USERS` lacking a user (lion for --nesterov, rotational_sgdm for --update_norm_decay)
    gave a false warning, and the warmup recipe reset that option to its default for that arm."""
    import logging

    from hf_ext.optim.warmup_trainer import (
        OPTIMIZER_CHOICES,
        _options_from_args,
        build_normalized_optimizer,
        check_normalized_optimizer_arguments,
    )

    values = dict(adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6, lion_beta1=0.9, lion_beta2=0.95,
                  sgd_momentum=0.5, nesterov=False, inverse_bias_correction=False, snr_correction=True,
                  rotation_angle=0.05, zero_mean=False, per_neuron=False, update_norm_decay=0.5)  # fmt: skip
    for optimizer in OPTIMIZER_CHOICES:
        default = _options_from_args(optimizer, WarmupFreeTrainingArguments(
            output_dir="o", normalized_optimizer=optimizer, weight_decay=0.1))  # fmt: skip
        for option, value in values.items():
            args = WarmupFreeTrainingArguments(output_dir="o", normalized_optimizer=optimizer, weight_decay=0.1,
                                               **{option: value})  # fmt: skip
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="hf_ext.optim.warmup_trainer"):
                check_normalized_optimizer_arguments(args)
            warned = any(f"--{option}={value} is ignored" in r.getMessage() for r in caplog.records)
            read = _options_from_args(optimizer, args) != default
            assert warned != read, (optimizer, option, "warned" if warned else "not warned", "read" if read else "")
    args = WarmupFreeTrainingArguments(output_dir="o", normalized_optimizer="lion", nesterov=False)
    assert build_normalized_optimizer(nn.Linear(2, 2), args).param_groups[0]["nesterov"] is False


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        ("LionA", {"inverse_bias_correction": "false"}),
        ("LionA", {"nesterov": 1}),
        ("LionAR", {"zero_mean": "false", "angle": 0.1}),
        ("RotationalWrapper", {"per_neuron": "false", "angle": 0.1}),
    ],
)
def test_normalized_optimizer_switches_must_be_booleans(cls, kwargs):
    """The switches are read by truthiness in the step: "false" used to act as True (bit-identical runs)."""
    import hf_ext.optim

    p = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match=f"`{next(iter(kwargs))}`.* must be True or False"):
        getattr(hf_ext.optim, cls)([p], **kwargs)


def test_counts_and_seeds_refuse_bools_and_fractions():
    from hf_ext.metadata import MetadataCollator, metadata_template
    from hf_ext.optim import TrapezoidSchedule

    with pytest.raises(ValueError, match="num_training_steps"):
        TrapezoidSchedule(True)
    with pytest.raises(ValueError, match="cooldown_fraction"):
        TrapezoidSchedule(10, cooldown_fraction="0.5")
    with pytest.raises(ValueError, match="max_chars"):
        metadata_template("url", max_chars=True)
    template = metadata_template("url")
    with pytest.raises(ValueError, match="block_size"):
        MetadataCollator(tokenizer=None, template=template, block_size=True)
    with pytest.raises(ValueError, match="seed"):
        MetadataCollator(tokenizer=None, template=template, block_size=8, seed=1.5)
