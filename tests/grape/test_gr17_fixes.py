"""GRAPE fixes of audit pass 17: a pgf plot without its TeX system refused at construction (and the recipe's plot
written after the model and results), `data_seed` honoured, arguments a run never reads refused, raw-text streams
refused naming the domain, and the public building blocks' row indices, epoch length, names and pad id checked."""

import os

import numpy as np
import pytest
import torch
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

# ---- #1: plot_file="*.pgf" without the TeX system of rcParams["pgf.texsystem"] ----------------------------------


@pytest.mark.parametrize("texsystem", ["xelatex", "lualatex"])
def test_pgf_plot_refused_when_its_tex_system_is_missing(tmp_path, monkeypatch, texsystem):
    import matplotlib

    from hf_ext.grape import GrapeConfig

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no TeX system can be found
    monkeypatch.setitem(matplotlib.rcParams, "pgf.texsystem", texsystem)
    with pytest.raises(ValueError, match=f"plot_file='w.pgf'.*'{texsystem}' is not on PATH"):
        GrapeConfig(output_dir=str(tmp_path / "o"), plot_file="w.pgf")


def test_pgf_plot_accepted_when_its_tex_system_is_found(tmp_path, monkeypatch):
    import matplotlib

    from hf_ext.grape import GrapeConfig

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tex = bin_dir / "lualatex"
    tex.write_text("#!/bin/sh\nexit 0\n")
    tex.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setitem(matplotlib.rcParams, "pgf.texsystem", "lualatex")
    GrapeConfig(output_dir=str(tmp_path / "o"), plot_file="w.pgf")


def test_recipe_keeps_the_model_and_results_when_the_plot_fails_at_the_end(tmp_path, monkeypatch):
    """The plot used to be written inside train() (on_train_end), before the recipe saved the model and
    grape_results.json: a plot failing there lost both. It is now written last."""
    import hf_ext.grape.plotting as plotting
    from hf_ext.recipes.grape import main

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(plotting, "plot_mixture_trajectory", broken_plot)
    out = tmp_path / "out"
    argv = ["--vocab_size", "300", "--per_device_train_batch_size", "2", "--hidden_size", "32", "--intermediate_size",
            "64", "--num_attention_heads", "2", "--num_hidden_layers", "1", "--block_size", "32",
            "--reweight_batch_size", "2", "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1",
            "--reweight_tasks_every", "1", "--source_domains", "text,numeric", "--max_steps", "1", "--report_to",
            "none", "--use_cpu", "true", "--disable_tqdm", "true", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(RuntimeError, match="plot failed"):
        main(argv)
    written = set(os.listdir(out))
    assert {"model.safetensors", "config.json", "grape_results.json", "mixture.json"} <= written, written


def test_trainer_writes_the_plot_at_train_end_unless_told_not_to(tmp_path):
    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic_mixture(n_per_domain=4, length=16, n_target=4)
    for plot_at_end in (True, False):
        out = tmp_path / str(plot_at_end)
        args = quick_grape_args(out, max_steps=1, reweight_method="uniform")
        trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train)
        trainer.plot_at_train_end = plot_at_end
        trainer.train()
        assert (out / "mixture.json").is_file()
        assert (out / "mixture_weights.png").is_file() == plot_at_end
        assert trainer.save_mixture_plot() == str(out / "mixture_weights.png")
        assert (out / "mixture_weights.png").is_file()


# ---- #2: data_seed seeds the data draws (else seed), as in transformers' Trainer ------------------------------------
def _first_indices(tmp_path, n=32, **overrides):
    from hf_ext.grape import GrapeTrainer

    train, _ = synthetic_mixture(n_per_domain=16, length=8, n_target=4)
    args = quick_grape_args(tmp_path, reweight_method="uniform", **overrides)
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train)
    sampler = trainer._get_train_sampler()
    minibatch = trainer._rng("domain").integers(10**9, size=4).tolist()
    return list(sampler)[:n], minibatch


def test_data_seed_changes_the_data_order_and_seed_alone_does_not_when_it_is_set(tmp_path):
    one, mb_one = _first_indices(tmp_path, seed=0, data_seed=1)
    two, mb_two = _first_indices(tmp_path, seed=0, data_seed=2)
    assert one != two and mb_one != mb_two  # data_seed used to be ignored: identical streams
    other_seed, mb_other = _first_indices(tmp_path, seed=7, data_seed=1)
    assert other_seed == one and mb_other == mb_one  # the model seed no longer moves the data order
    # without data_seed the data draws follow seed, as before
    assert _first_indices(tmp_path, seed=1) == (one, mb_one)
    assert _first_indices(tmp_path, seed=0) != (one, mb_one)


def test_streaming_mixture_is_seeded_with_data_seed(tmp_path):
    from datasets import Dataset

    from hf_ext.grape import GrapeTrainer

    streams = {d: Dataset.from_dict({"input_ids": [[3, 4, 5]] * 4}).to_iterable_dataset() for d in "ab"}
    for overrides, expected in (({"seed": 0, "data_seed": 5}, 5), ({"seed": 3}, 3)):
        args = quick_grape_args(tmp_path, reweight_method="uniform", **overrides)
        trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=streams)
        assert trainer.train_dataset.seed == expected


# ---- #3: arguments the run never reads ------------------------------------------------------------------------------
def test_samples_per_epoch_refused_on_the_streaming_path(tmp_path):
    from datasets import Dataset

    from hf_ext.grape import GrapeTrainer

    streams = {d: Dataset.from_dict({"input_ids": [[3, 4, 5]] * 4}).to_iterable_dataset() for d in "ab"}
    args = quick_grape_args(tmp_path, reweight_method="uniform", samples_per_epoch=3)
    with pytest.raises(ValueError, match="samples_per_epoch=3 .* never reads it"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=streams)


@pytest.mark.parametrize("method", ["uniform", "fixed", "doremi"])
def test_task_weights_refused_with_a_method_that_never_reads_them(tmp_path, method):
    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic_mixture(n_per_domain=4, length=16, n_target=4)
    extra = {"domain_weights": {"a": 0.5, "b": 0.3, "c": 0.2}} if method == "fixed" else {}
    if method == "doremi":
        extra["reference_model"] = tiny_llama()
    args = quick_grape_args(tmp_path, reweight_method=method)
    with pytest.raises(ValueError, match=f"task_weights=... are read only by .* reweight_method='{method}' never"):
        GrapeTrainer(
            model=tiny_llama(),
            args=args,
            train_dataset=train,
            target_datasets=targets,
            task_weights={"t_a": 0.9, "t_b": 0.1},
            **extra,
        )


@pytest.mark.parametrize("method", ["grape", "grape_gap", "doge"])
def test_task_weights_accepted_with_a_method_that_reads_them(tmp_path, method):
    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic_mixture(n_per_domain=4, length=16, n_target=4)
    trainer = GrapeTrainer(
        model=tiny_llama(),
        args=quick_grape_args(tmp_path, reweight_method=method),
        train_dataset=train,
        target_datasets=targets,
        task_weights={"t_a": 0.9, "t_b": 0.1},
    )
    assert trainer.mixture_state.task_weights.tolist() == pytest.approx([0.9, 0.1])


# ---- #4: raw-text streams ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_raw_text_streams_refused_at_construction_naming_the_domain(tmp_path, with_tokenizer):
    from datasets import Dataset

    from hf_ext.grape import GrapeTrainer

    streams = {"web": Dataset.from_dict({"input_ids": [[3, 4, 5]] * 4}).to_iterable_dataset()}
    streams["code"] = Dataset.from_dict({"text": ["some raw text"] * 4}).to_iterable_dataset()
    extra = {}
    if with_tokenizer:
        from hf_ext.data import build_tokenizer

        extra["processing_class"] = build_tokenizer(300)
    args = quick_grape_args(tmp_path, reweight_method="uniform")
    with pytest.raises(ValueError, match=r"train_dataset\['code'\] has no input_ids \(columns: \['text'\]\)"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=streams, **extra)


def test_stream_with_unknown_columns_refused_at_its_first_row_naming_the_domain(tmp_path):
    from datasets import IterableDataset

    from hf_ext.grape import GrapeTrainer

    def raw():
        yield from ({"text": "some raw text"} for _ in range(4))

    stream = IterableDataset.from_generator(raw)
    assert stream.column_names is None  # nothing to check at construction
    args = quick_grape_args(tmp_path, reweight_method="uniform", max_steps=1)
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset={"web": stream})
    with pytest.raises(ValueError, match=r"train_dataset\['web'\] has no input_ids"):
        trainer.train()  # used to be a bare KeyError: 'input_ids'


# ---- #5: public building blocks ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rows, match",
    [
        ([-1], "negative row index -1"),
        ([0, 1.5], "int dataset row indices"),
        ([True, False], "int dataset row indices"),
        ([[0, 1]], "int dataset row indices"),
        ("01", "sequence of dataset row indices"),
    ],
)
def test_sampler_refuses_bad_row_indices_naming_the_domain(rows, match):
    from hf_ext.grape import MixtureSampler, MixtureState

    state = MixtureState(["a", "b"], [], [1.0, 0.0], [])
    with pytest.raises(ValueError, match=rf"domain_indices\[0\] \(domain 'a'\).*{match}"):
        MixtureSampler([rows, [0, 1, 2, 3]], state, num_samples=5)


def test_sampler_num_samples_refuses_bools_and_takes_numpy_ints():
    from hf_ext.grape import MixtureSampler, MixtureState

    state = MixtureState(["a", "b"], [], [0.5, 0.5], [])
    for bad in (True, np.bool_(True), 0, 2.0):
        with pytest.raises(ValueError, match="num_samples must be a positive int"):
            MixtureSampler([[0], [1]], state, num_samples=bad)
    assert len(MixtureSampler([[0], [1]], state, num_samples=np.int64(5))) == 5
    assert len(MixtureSampler([np.array([0, 2]), [1]], state)) == 3


@pytest.mark.parametrize("arg", ["domain_names", "task_names"])
def test_mixture_state_refuses_repeated_names(arg):
    from hf_ext.grape import MixtureState

    kwargs = {"domain_names": ["a", "b"], "task_names": ["t", "u"], "domain_weights": [0.5, 0.5],
              "task_weights": [0.5, 0.5]}  # fmt: skip
    kwargs[arg] = ["a", "a", "b"] if arg == "domain_names" else ["t", "t", "u"]
    kwargs[arg.replace("names", "weights")] = [0.2, 0.3, 0.5]
    with pytest.raises(ValueError, match=f"{arg} repeats"):
        MixtureState(**kwargs)


@pytest.mark.parametrize("arg", ["domain_names", "task_names"])
def test_plot_refuses_a_name_list_that_does_not_match_the_weights(tmp_path, arg):
    from hf_ext.grape import plot_mixture_trajectory

    trajectory = [{"step": 0, "domain_weights": [0.5, 0.5], "task_weights": [0.5, 0.5]}]
    names = {"domain_names": ["a", "b"], "task_names": ["t", "u"]}
    names[arg] = names[arg][:1]
    with pytest.raises(ValueError, match=rf"{arg} has 1 names .* trajectory\[0\] has 2"):
        plot_mixture_trajectory(trajectory, names["domain_names"], names["task_names"], str(tmp_path / "p.png"))
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("pad", [-1, 2.7, True, "0", None])
def test_pad_target_features_refuses_a_pad_id_that_is_not_a_token_id(pad):
    from hf_ext.grape import pad_target_features

    with pytest.raises(ValueError, match="pad_token_id must be a non-negative int"):
        pad_target_features([{"input_ids": [5, 6]}, {"input_ids": [7]}], pad)


def test_pad_target_features_takes_numpy_int_pad_ids():
    from hf_ext.grape import pad_target_features

    batch = pad_target_features([{"input_ids": [5, 6]}, {"input_ids": [7]}], np.int64(3))
    assert batch["input_ids"].tolist() == [[5, 6], [7, 3]]
    assert batch["labels"].dtype == torch.long
