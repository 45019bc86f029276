"""GRAPE fixes of audit pass 15: refusals made before any work (reentrant checkpointing / FSDP in the recipe, a plot
format matplotlib cannot write, output names that collide, flags the chosen method never reads, two domain-weight
sources) and DoGE's fixed task weights read from a mixture file."""

import json

import pytest
from grape_synthetic import parse_grape_recipe as _parse
from grape_synthetic import without_reweighting

TINY = ["--vocab_size", "300", "--per_device_train_batch_size", "4", "--hidden_size", "32", "--intermediate_size",
        "64", "--num_attention_heads", "2", "--reweight_domains_every", "2", "--reweight_tasks_every", "2",
        "--max_steps", "2", "--report_to", "none"]  # fmt: skip
EARLIER = ("grape_results.json", "mixture.json", "mixture_weights.png")


def _earlier_run(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in EARLIER:
        (folder / name).write_text("{}")


# ---- #2: reentrant activation checkpointing / FSDP refused before the earlier results are cleared ------------------
@pytest.mark.parametrize(
    "extra",
    [
        ["--gradient_checkpointing", "true", "--gradient_checkpointing_kwargs", '{"use_reentrant": true}'],
        ["--activation_checkpointing", "true", "--activation_checkpointing_kwargs", '{"use_reentrant": true}'],
        ["--reweight_method", "doge", "--gradient_checkpointing", "true", "--gradient_checkpointing_kwargs",
         '{"use_reentrant": "true"}'],
    ],  # fmt: skip
)
def test_reentrant_checkpointing_refused_before_earlier_results_are_cleared(tmp_path, extra):
    from hf_ext.recipes.grape import main

    out = tmp_path / "out"
    _earlier_run(out)
    with pytest.raises(ValueError, match="reentrant activation checkpointing.*use_reentrant"):
        main([*TINY, "--output_dir", str(out), *extra])
    assert sorted(p.name for p in out.iterdir()) == sorted(EARLIER)


def test_non_reentrant_checkpointing_and_uniform_with_reentrant_pass_validation(tmp_path):
    from hf_ext.recipes.grape import validate_args

    validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "a"), "--gradient_checkpointing", "true"]))
    validate_args(
        *_parse(
            [*without_reweighting(TINY), "--output_dir", str(tmp_path / "b"), "--reweight_method", "uniform",
             "--gradient_checkpointing",
             "true", "--gradient_checkpointing_kwargs", '{"use_reentrant": true}']  # fmt: skip
        )
    )


@pytest.mark.parametrize("method", ["grape", "doremi"])
def test_fsdp_with_a_gradient_method_refused_before_earlier_results_are_cleared(tmp_path, method):
    from hf_ext.recipes.grape import main

    out = tmp_path / "out"
    _earlier_run(out)
    extra = ["--reference_model_name_or_path", str(tmp_path)] if method == "doremi" else []
    with pytest.raises(ValueError, match=f"reweight_method='{method}'.*FSDP and DeepSpeed \\(--fsdp\\)"):
        main([*TINY, "--output_dir", str(out), "--reweight_method", method, "--fsdp", "full_shard", *extra])
    assert sorted(p.name for p in out.iterdir()) == sorted(EARLIER)


def test_accelerate_fsdp_environment_refused_with_grape(tmp_path, monkeypatch):
    from hf_ext.recipes.grape import validate_args

    parsed = _parse([*TINY, "--output_dir", str(tmp_path / "o")])
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP and DeepSpeed \\(--fsdp\\)"):
        validate_args(*parsed)


# ---- #1: a plot_file extension matplotlib cannot write is refused at construction --------------------------------
@pytest.mark.parametrize("name", ["weights.txt", "weights.csv", "weights.json", "weights.pgn"])
def test_plot_file_with_an_unwritable_format_is_refused_naming_the_flag(tmp_path, name):
    from hf_ext.grape import GrapeConfig

    with pytest.raises(ValueError, match=f"plot_file='{name}'.*matplotlib cannot write"):
        GrapeConfig(output_dir=str(tmp_path), plot_file=name)


@pytest.mark.parametrize("name", ["w.png", "w.PDF", "w.svg", "weights", "", None])
def test_plot_file_with_a_writable_format_is_accepted(tmp_path, name):
    from hf_ext.grape import GrapeConfig

    GrapeConfig(output_dir=str(tmp_path), plot_file=name)


def test_recipe_refuses_a_txt_plot_before_earlier_results_are_cleared(tmp_path):
    from hf_ext.recipes.grape import main

    out = tmp_path / "out"
    _earlier_run(out)
    with pytest.raises(ValueError, match="plot_file='weights.txt'"):
        main([*TINY, "--output_dir", str(out), "--plot_file", "weights.txt"])
    assert sorted(p.name for p in out.iterdir()) == sorted(EARLIER)


# ---- #5: output names that collide with each other or with the recipe's own files ------------------------------
def test_config_refuses_the_same_name_for_the_mixture_and_the_plot(tmp_path):
    from hf_ext.grape import GrapeConfig

    with pytest.raises(ValueError, match="plot_file and export_mixture_file both name 'w.png'"):
        GrapeConfig(output_dir=str(tmp_path), plot_file="w.png", export_mixture_file="./w.png")


@pytest.mark.parametrize(
    "flag, name",
    [
        ("--export_mixture_file", "grape_results.json"),
        ("--export_mixture_file", "config.json"),
        ("--export_mixture_file", "model.safetensors"),
        ("--export_mixture_file", "target_eval.json"),
        ("--plot_file", "target_eval.png"),
    ],
)
def test_recipe_refuses_output_names_of_its_own_files(tmp_path, flag, name):
    from hf_ext.recipes.grape import validate_args

    with pytest.raises(ValueError, match=f"{flag} '{name}' names a file the recipe writes itself"):
        validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), flag, name]))


def test_recipe_accepts_other_output_names(tmp_path):
    from hf_ext.recipes.grape import validate_args

    argv = ["--export_mixture_file", "weights/mix.json", "--plot_file", "weights/mix.svg"]
    validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))


# ---- #4: step-size / smoothing / EMA / DoReMi flags the chosen methods never read ------------------------------
@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--reweight_method", "uniform", "--domain_step_size", "3"], "--domain_step_size"),
        (["--reweight_method", "uniform", "--task_step_size", "3"], "--task_step_size"),
        (["--doremi_eta", "0.1"], "--doremi_eta"),
        (["--doremi_smoothing", "0.01"], "--doremi_smoothing"),
        (["--reweight_method", "doge", "--task_step_size", "1"], "--task_step_size"),
        (["--reweight_method", "doge", "--task_smoothing", "0.2"], "--task_smoothing"),
        (["--ema_beta", "0.5"], "--ema_beta"),
        (["--reweight_method", "grape_gap", "--step_size_convention", "lr_scaled", "--compare_methods", "uniform"],
         None),
    ],  # fmt: skip
)
def test_flags_no_method_of_the_run_reads_are_refused(tmp_path, argv, flag):
    from hf_ext.recipes.grape import validate_args

    if flag is None:  # --compare_methods without grape*: the convention is read by none of them
        argv, flag = ["--step_size_convention", "lr_scaled", "--compare_methods", "uniform"], "--step_size_convention"
    with pytest.raises(ValueError, match=f"{flag} is read only by --reweight_method .* has no effect on"):
        validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))


@pytest.mark.parametrize(
    "argv",
    [
        ["--domain_step_size", "3", "--task_step_size", "3", "--task_smoothing", "0.01"],
        ["--reweight_method", "grape_ema", "--ema_beta", "0.5"],
        ["--reweight_method", "doge", "--domain_step_size", "3", "--domain_smoothing", "0.1"],
        ["--compare_methods", "grape,uniform", "--task_step_size", "3"],
    ],
)
def test_flags_a_method_of_the_run_reads_are_accepted(tmp_path, argv):
    from hf_ext.recipes.grape import validate_args

    base = without_reweighting(TINY, keep=("--reweight_domains_every",))  # doge has no task updates to schedule
    validate_args(*_parse([*base, "--output_dir", str(tmp_path / "o"), *argv]))


def test_eval_fraction_without_targets_is_refused(tmp_path):
    from hf_ext.recipes.grape import validate_args

    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": f"row {i}", "domain": "ab"[i % 2]}) + "\n" for i in range(8)))
    argv = ["--train_file", str(src), "--reweight_method", "uniform", "--output_dir", str(tmp_path / "o")]
    validate_args(*_parse([*without_reweighting(TINY), *argv]))
    with pytest.raises(ValueError, match="--eval_fraction splits the target tasks' blocks, but this run has none"):
        validate_args(*_parse([*without_reweighting(TINY), *argv, "--eval_fraction", "0.9"]))


# ---- #7 / #6: two domain-weight sources; DoGE's fixed task weights ---------------------------------------------
@pytest.mark.parametrize("method", ["fixed", "grape", "doge"])
def test_domain_weights_with_a_mixture_file_is_refused_naming_both(tmp_path, method):
    from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic_mixture(n_per_domain=4, length=16, n_target=4)
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"a": 0.8, "b": 0.1, "c": 0.1}))
    args = quick_grape_args(tmp_path / "o", reweight_method=method, mixture_file=str(mix))
    with pytest.raises(ValueError, match="domain_weights=... and mixture_file=.*mix.json' both give the domain weights"):
        GrapeTrainer(
            model=tiny_llama(),
            args=args,
            train_dataset=train,
            target_datasets=targets,
            domain_weights={"a": 0.1, "b": 0.1, "c": 0.8},
        )


def test_doge_holds_task_weights_of_task_weights_and_never_reads_a_files_tasks(tmp_path):
    """docs/grape.md (Baselines): doge's fixed task weights are uniform or `task_weights=`; a mixture file gives domain
    weights only (its `tasks` are not read)."""
    from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic_mixture(n_per_domain=4, length=16, n_target=4)
    names = sorted(targets)
    mix = tmp_path / "mix.json"
    mix.write_text(json.dumps({"a": 0.8, "b": 0.1, "c": 0.1}))
    args = quick_grape_args(tmp_path / "o", reweight_method="doge", mixture_file=str(mix))
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    assert trainer.mixture_state.task_weights.tolist() == pytest.approx([1 / len(names)] * len(names))
    assert trainer.mixture_state.domain_weights.tolist() == pytest.approx([0.8, 0.1, 0.1])
    chosen = {n: (0.9 if i == 0 else 0.1 / (len(names) - 1)) for i, n in enumerate(names)}
    args = quick_grape_args(tmp_path / "p", reweight_method="doge")
    trainer = GrapeTrainer(
        model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets, task_weights=chosen
    )
    assert trainer.mixture_state.task_weights.tolist() == pytest.approx([chosen[n] for n in names])


# ---- #3: g_alpha / g_tgt average reweight_batch // mini gradients over batches of the per-device train batch --------
def test_mixture_and_target_gradients_use_batches_of_the_per_device_train_batch_size(tmp_path):
    """As the GRAPE code (tgt_reweight_step / domain_reweight_step): reweight_batch_size // reweight_mini_batch_size
    gradients, each over a batch of `per_device_train_batch_size` sequences drawn from the training (target) mixture;
    the per-domain and per-task minibatches stay at `reweight_mini_batch_size`. Until 2026-12-04 the mixture and
    target batches had `reweight_mini_batch_size` sequences."""
    from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

    from hf_ext.grape import GrapeConfig, GrapeTrainer

    assert "(16 sequences for the mixture" not in GrapeConfig.__doc__  # the reference default: 2 train batches
    train, targets = synthetic_mixture(n_per_domain=8, length=16, n_target=8)
    for method in ("grape", "doge"):
        args = quick_grape_args(
            tmp_path, reweight_method=method, per_device_train_batch_size=5, reweight_batch_size=6,
            reweight_mini_batch_size=2,
        )  # fmt: skip
        trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
        sizes = []
        mixture, per_domain, per_task = trainer._mixture_batch, trainer._domain_batch, trainer._task_batch

        def record_mixture(weights, rng, size, kind, draw=mixture, sizes=sizes):
            sizes.append((kind + " mixture", size))
            return draw(weights, rng, size, kind)

        def record_domain(k, rng, size, draw=per_domain, sizes=sizes):
            sizes.append(("domain k", size))
            return draw(k, rng, size)

        def record_task(n, rng, size, draw=per_task, sizes=sizes):
            sizes.append(("task n", size))
            return draw(n, rng, size)

        trainer._mixture_batch, trainer._domain_batch, trainer._task_batch = record_mixture, record_domain, record_task
        if method == "grape":
            trainer._task_step({})
            # g_alpha: 6 // 2 = 3 batches of 5 (the train batch); h_n: one minibatch of 2 per task
            assert sizes == [("domain mixture", 5)] * 3 + [("task n", 2)] * 2
            sizes.clear()
        trainer._domain_step({})
        # g_tgt: 3 batches of 5 from the task mixture; g_k: one minibatch of 2 per domain
        assert sizes == [("task mixture", 5)] * 3 + [("domain k", 2)] * 3, method
