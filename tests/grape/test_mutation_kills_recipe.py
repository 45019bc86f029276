"""What the GRAPE recipe gives each trained method (order, DoReMi's reference model), how it splits each target into
reweighting and evaluation blocks, and the per-target summary it reports."""

from __future__ import annotations

import math

import pytest

from hf_ext.recipes.grape import main

from .test_recipe_audit import TINY


def test_doremi_trains_after_uniform_and_uses_its_model_as_reference(tmp_path, monkeypatch):
    """`--compare_methods doremi,grape,uniform` without --reference_model_name_or_path: uniform is trained before
    doremi, whose reference model is the uniform model's folder; each method trains in its own sub-folder."""
    import hf_ext.recipes.grape as recipe

    calls = []

    def record(args, *rest):
        calls.append((args.reweight_method, args.output_dir, args.reference_model_name_or_path))
        return {"method": args.reweight_method, "target_eval_loss": {}}

    monkeypatch.setattr(recipe, "_train_one", record)
    out = tmp_path / "cmp"
    main(TINY + ["--output_dir", str(out), "--compare_methods", "doremi,grape,uniform"])
    order = [m for m, _, _ in calls]
    assert sorted(order) == ["doremi", "grape", "uniform"]
    assert order.index("uniform") < order.index("doremi")
    for method, folder, reference in calls:
        assert folder == str(out / method)
        assert reference == (str(out / "uniform") if method == "doremi" else None)


def test_targets_are_split_by_eval_fraction_and_the_summary_is_mean_and_worst(tmp_path, monkeypatch):
    """Each target's blocks are split into disjoint reweighting and evaluation parts, the evaluation part holding
    round(n x --eval_fraction) blocks; the reported mean / worst target loss and perplexities follow from the
    per-target losses (here fixed values standing in for the evaluation)."""
    import hf_ext.grape as grape_pkg
    import hf_ext.utils.evaluation as evaluation

    seen = {}

    class Recording(grape_pkg.GrapeTrainer):
        def __init__(self, *a, target_datasets=None, **kw):
            seen["reweight"] = dict(target_datasets)
            super().__init__(*a, target_datasets=target_datasets, **kw)

    losses = iter([2.0, 5.0])
    evaluated = {}

    def fake_loss(model, ds, batch_size):
        value = next(losses)
        evaluated[value] = ds
        return value

    monkeypatch.setattr(grape_pkg, "GrapeTrainer", Recording)
    monkeypatch.setattr(evaluation, "causal_lm_eval_loss", fake_loss)
    metrics = main(TINY + ["--output_dir", str(tmp_path), "--eval_fraction", "0.25"])
    names = list(metrics["target_eval_loss"])
    assert len(names) == 2
    for name, value in zip(names, (2.0, 5.0)):
        reweight, held_out = seen["reweight"][name], evaluated[value]
        n = len(reweight) + len(held_out)
        assert n >= 4
        assert len(held_out) == max(1, round(n * 0.25))
        assert not {tuple(r) for r in reweight["input_ids"]} & {tuple(r) for r in held_out["input_ids"]}
    assert metrics["target_eval_loss"] == {names[0]: 2.0, names[1]: 5.0}
    assert metrics["mean_target_eval_loss"] == pytest.approx(3.5)
    assert metrics["worst_target_eval_loss"] == pytest.approx(5.0)
    assert metrics["target_eval_perplexity"][names[1]] == pytest.approx(math.exp(5.0))


def test_seed_selects_which_target_blocks_are_held_out(tmp_path, monkeypatch):
    """The reweighting / evaluation split of each target follows --seed: the same seed gives the same held-out
    blocks, another seed another selection (the trainings are replaced by a recorder of the split)."""
    import hf_ext.recipes.grape as recipe

    held_out = {}

    def record(args, model_args, tokenizer, sources, reweight_targets, eval_targets):
        held_out[args.seed] = {name: sorted(map(tuple, ds["input_ids"])) for name, ds in eval_targets.items()}
        return {"method": args.reweight_method, "target_eval_loss": {}}

    monkeypatch.setattr(recipe, "_train_one", record)
    splits = []
    for seed in (3, 4, 3):
        main(TINY + ["--output_dir", str(tmp_path / f"s{seed}"), "--seed", str(seed)])
        splits.append(held_out[seed])
    assert splits[0] == splits[2]
    assert splits[0] != splits[1]
