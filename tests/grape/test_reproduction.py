"""Slow reproduction of GRAPE's behaviour on synthetic multi-source, multi-target data.

Four source domains come from distinct random Markov chains; domain `b` is a higher-entropy (harder) chain. Target
task `t_easy` is served by source `a`, target `t_hard` by source `b`; `c` and `d` serve no target. GRAPE should move
task weight to the harder (slower-improving) target and domain weight to its source. A lower average target loss than
uniform mixing is not asserted: it holds on only 6 of seeds 0-19 (docs/reproductions.md). Seeds 0, 1 and 2 are run.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from hf_ext.grape import GrapeConfig, GrapeTrainer

LENGTH = 32
CHAINS = {"a": (11, 2), "b": (12, 6), "c": (13, 2), "d": (14, 3)}  # domain -> (chain seed, branching)


def build_data(markov_sequences):
    from datasets import Dataset

    rows, domains = [], []
    for d, (seed, branching) in CHAINS.items():
        seqs = markov_sequences(seed, 400, LENGTH, branching=branching, sample_seed=0)
        rows += seqs
        domains += [d] * len(seqs)
    train = Dataset.from_dict({"input_ids": rows, "domain": domains})

    def task(domain, sample_seed, n):
        seed, branching = CHAINS[domain]
        return Dataset.from_dict(
            {"input_ids": markov_sequences(seed, n, LENGTH, branching=branching, sample_seed=sample_seed)}
        )

    targets = {"t_easy": task("a", 1, 64), "t_hard": task("b", 1, 64)}
    held_out = {"t_easy": task("a", 2, 128), "t_hard": task("b", 2, 128)}
    return train, targets, held_out


def eval_loss(model, ds) -> float:
    model.eval()
    with torch.no_grad():
        ids = torch.tensor(ds["input_ids"])
        return float(model(input_ids=ids, labels=ids).loss)


def run(method, out, train, targets, held_out, tiny_llama, steps=300, domain_step=1.5, task_step=5.0, seed=0):
    args = GrapeConfig(
        output_dir=str(out),
        reweight_method=method,
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        reweight_domains_every=10,
        reweight_tasks_every=10,
        reweight_batch_size=16,
        reweight_mini_batch_size=8,
        domain_step_size=domain_step,
        task_step_size=task_step,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1000,
        seed=seed,
    )
    trainer = GrapeTrainer(
        model=tiny_llama(hidden=64, seed=seed), args=args, train_dataset=train, target_datasets=targets
    )
    start = time.perf_counter()
    trainer.train()
    losses = {name: eval_loss(trainer.model, ds) for name, ds in held_out.items()}
    st = trainer.mixture_state
    return {
        "seconds": time.perf_counter() - start,
        "target_loss": losses,
        "mean_target_loss": sum(losses.values()) / len(losses),
        "domain_weights": dict(zip(st.domain_names, st.domain_weights.tolist())),
        "average_domain_weights": dict(zip(st.domain_names, st.average_domain_weights().tolist())),
        "task_weights": dict(zip(st.task_names, st.task_weights.tolist())),
        "average_task_weights": dict(zip(st.task_names, st.average_task_weights().tolist())),
    }


SEEDS = (0, 1, 2)


@pytest.mark.slow
def test_grape_prefers_hard_target_and_its_source(tmp_path, grape_helpers):
    """Over seeds 0, 1, 2: the weight claims on every seed, GRAPE's edge over DoGE on the hard target on the mean and on
    at least 2 of 3 seeds (it holds on 9 of seeds 0-9, not on seed 2: docs/grape.md)."""
    train, targets, held_out = build_data(grape_helpers["markov_sequences"])
    hard_margins = []
    for seed in SEEDS:
        runs = {
            method: run(method, tmp_path / f"{method}{seed}", train, targets, held_out, grape_helpers["tiny_llama"],
                        seed=seed)
            for method in ("grape", "uniform", "doge")
        }  # fmt: skip
        grape, uniform, doge = runs["grape"], runs["uniform"], runs["doge"]
        print(json.dumps({"seed": seed, **runs}, indent=1))

        z, alpha = grape["average_task_weights"], grape["average_domain_weights"]
        # Task weight moves to the harder target ...
        assert z["t_hard"] > z["t_easy"], seed
        assert grape["task_weights"]["t_hard"] > 0.5, seed
        # ... and domain weight to its source, above uniform and above every other domain.
        assert alpha["b"] > 0.25 and alpha["b"] == max(alpha.values()), (seed, alpha)
        # Unrelated sources lose weight.
        assert alpha["c"] < 0.25 and alpha["d"] < 0.25, (seed, alpha)
        # Not asserted: a lower average target loss than uniform. It fails on 14 of seeds 0-19, where GRAPE starves
        # t_easy's source (`hf-ext reproduce grape --seeds 20`, docs/reproductions.md).
        print("seed", seed, "uniform - GRAPE mean target loss:", uniform["mean_target_loss"] - grape["mean_target_loss"])
        # DoGE (the GRAPE repository's baseline: same domain step, task weights fixed at uniform) moves too: the
        # sources that serve a target gain weight, the unrelated ones lose it; it does not single out the hard target's
        # source as strongly as GRAPE, which also shifts the task weights.
        a_doge = doge["average_domain_weights"]
        assert doge["task_weights"] == {"t_easy": 0.5, "t_hard": 0.5}
        assert a_doge["a"] + a_doge["b"] > 0.6 and a_doge["c"] < 0.25 and a_doge["d"] < 0.25, (seed, a_doge)
        assert alpha["b"] > a_doge["b"], seed
        assert doge["mean_target_loss"] < uniform["mean_target_loss"], seed
        hard_margins.append(doge["target_loss"]["t_hard"] - grape["target_loss"]["t_hard"])
    # GRAPE puts the lagging target first: its hard target ends lower than under DoGE on the mean and on most seeds
    # (seeds 0-9: 9 of 10, margin 0.081 +- 0.061; docs/grape.md). Its mean, and its worst target, can be higher.
    print("DoGE - GRAPE t_hard loss per seed:", hard_margins)
    assert sum(hard_margins) / len(hard_margins) > 0
    assert sum(m > 0 for m in hard_margins) >= 2
