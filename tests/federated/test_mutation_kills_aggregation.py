"""Aggregation math and its input validation (FedAvg, LoRA merge, client-level DP pieces), and the Trainer / Flower
run-config options that feed it."""

import math

import pytest
import torch

from hf_ext.federated import (
    add_server_noise,
    aggregate_round,
    apply_mean_update,
    clip_update,
    dp_fedavg_mean,
    fedavg,
    lora_pairs,
    merge_then_average,
)


def _lora_state(seed, out=4, inp=3, r=2, prefix="m.q"):
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}.lora_A.default.weight": torch.randn(r, inp, generator=g),
        f"{prefix}.lora_B.default.weight": torch.randn(out, r, generator=g),
    }


# ---------------------------------------------------------------------------------------------------------- FedAvg


@pytest.mark.parametrize("weights", [[1.0, -1.0, 2.0], [1.0, float("nan")], [1.0, float("inf")]])
def test_fedavg_refuses_negative_or_non_finite_weights(weights):
    states = [{"w": torch.ones(2)} for _ in weights]
    with pytest.raises(ValueError, match="finite and non-negative"):
        fedavg(states, weights)


def test_fedavg_keeps_the_first_clients_dtype_and_returns_no_autograd_graph():
    """The mean of bfloat16 tensors is bfloat16 (accumulated in float64, closed-form reference), and averaging
    tensors that require grad gives plain tensors."""
    a = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    b = torch.tensor([3.0, 6.0], dtype=torch.bfloat16)
    out = fedavg([{"w": a}, {"w": b}], [1.0, 3.0])
    assert out["w"].dtype == torch.bfloat16
    assert out["w"].tolist() == [2.5, 5.0]  # (1 + 9) / 4, (2 + 18) / 4: exact in bfloat16
    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.zeros(3))
    avg = fedavg([{"w": p}, {"w": q}], [1, 1])["w"]
    assert not avg.requires_grad and avg.grad_fn is None


# ------------------------------------------------------------------------------------------------------------- LoRA


def test_lora_pairs_refuse_an_a_factor_without_its_b_factor():
    state = _lora_state(0)
    del state["m.q.lora_B.default.weight"]
    with pytest.raises(ValueError, match="no matching"):
        lora_pairs(state)


@pytest.mark.parametrize("scaling", [float("nan"), float("inf")])
def test_merge_then_average_refuses_a_non_finite_scaling(scaling):
    with pytest.raises(ValueError, match="finite"):
        merge_then_average([_lora_state(0), _lora_state(1)], [1, 1], scaling)


# ---------------------------------------------------------------------------------------------- client-level DP


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("nan")])
def test_clip_update_refuses_a_non_positive_bound(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_update({"w": torch.ones(3)}, max_norm)


def test_dp_mean_refuses_a_federation_smaller_than_the_updates_or_empty():
    ups = [{"w": torch.ones(2, dtype=torch.float64)} for _ in range(3)]
    with pytest.raises(ValueError, match="cannot be smaller"):
        dp_fedavg_mean(ups, 2)
    with pytest.raises(ValueError, match=">= 1"):
        dp_fedavg_mean(ups, 0)
    torch.testing.assert_close(dp_fedavg_mean(ups, 6)["w"], torch.full((2,), 0.5, dtype=torch.float64))


def test_server_noise_does_not_depend_on_the_dicts_insertion_order():
    a = torch.zeros(3, dtype=torch.float64)
    b = torch.zeros(2, dtype=torch.float64)
    n1, _ = add_server_noise({"a": a, "b": b}, 1.0, 1.0, 2, torch.Generator().manual_seed(0))
    n2, _ = add_server_noise({"b": b, "a": a}, 1.0, 1.0, 2, torch.Generator().manual_seed(0))
    for k in ("a", "b"):
        torch.testing.assert_close(n1[k], n2[k], rtol=0, atol=0)
    # the keys are noised in sorted order: "a" takes the first 3 draws of the generator
    first = torch.normal(0.0, 0.5, size=(3,), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(n1["a"], first, rtol=0, atol=0)


def test_server_noise_refuses_an_infinite_clip_norm():
    with pytest.raises(ValueError, match="clip_norm"):
        add_server_noise({"w": torch.zeros(2, dtype=torch.float64)}, float("inf"), 1.0, 2)


# ------------------------------------------------------------------------------------------------- global update


def test_apply_mean_update_refuses_a_broadcastable_shape_and_keeps_dtypes():
    g = {"w": torch.zeros(3, 2, dtype=torch.bfloat16), "n": torch.tensor([5])}
    with pytest.raises(ValueError, match="shape"):
        apply_mean_update(g, {"w": torch.ones(1, 2, dtype=torch.float64)})  # would broadcast silently
    out = apply_mean_update(g, {"w": torch.full((3, 2), 0.5, dtype=torch.float64)})
    assert out["w"].dtype == torch.bfloat16 and out["n"].dtype == torch.int64
    assert out["w"].tolist() == [[0.5, 0.5]] * 3


def test_client_dp_noise_is_calibrated_on_the_federation_size():
    """With num_clients = 8 and 2 clients present, the released update is `sum / 8` plus N(0, (z C / 8)^2)."""
    g0 = {"w": torch.zeros(100_000, dtype=torch.float64)}
    states = [{"w": torch.zeros(100_000, dtype=torch.float64)} for _ in range(2)]
    out = aggregate_round(g0, states, [1, 1], "full", None, 2.0, 4.0, torch.Generator().manual_seed(1), num_clients=8)
    std = float(out["w"].std())
    assert std == pytest.approx(4.0 * 2.0 / 8, rel=0.02)
    assert not math.isclose(std, 4.0 * 2.0 / 2, rel_tol=0.5)


# ------------------------------------------------------------------------------------------------ PrivateTrainer


def _data(n=32, seed=1):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, 12), generator=g).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _args(out, **kw):
    from hf_ext.federated import PrivateTrainingArguments

    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=2, max_grad_norm=0, dp_clip_norm=1.0,
                dp_noise_multiplier=1.0, learning_rate=1e-3, report_to="none", disable_tqdm=True, save_strategy="no",
                use_cpu=True, seed=0, data_seed=0)  # fmt: skip
    return PrivateTrainingArguments(**{**base, **kw})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(goldfish_k=True), "goldfish_k"),
        (dict(goldfish_k=4, goldfish_context_width=0), "goldfish_context_width"),
        (dict(dp_delta=0.0), "dp_delta"),
        (dict(dp_delta=1.0), "dp_delta"),
        (dict(dp_clip_norm=None, dp_noise_multiplier=1.0), "needs --dp_clip_norm"),
        (dict(max_grad_norm=1.0), "max_grad_norm 0"),
    ],
)
def test_private_training_arguments_refuse_settings_without_a_meaning(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kwargs)


def test_dp_trainer_accounts_each_step_at_the_poisson_rate_and_divides_by_the_expected_batch(tmp_path, monkeypatch):
    """q = batch size / dataset size (4 / 32) for every step in the accountant, epsilon is logged, and each step's
    noised sum is divided by the configured (expected) batch size, whatever the drawn batch's size."""
    import hf_ext.federated.trainer as trainer_mod
    from hf_ext.federated import PrivateTrainer

    from .conftest import tiny_llama

    seen = []
    real = trainer_mod.dp_gradient
    monkeypatch.setattr(
        trainer_mod, "dp_gradient", lambda *a, **k: seen.append(k["expected_batch_size"]) or real(*a, **k)
    )
    args = _args(tmp_path, max_steps=3, logging_steps=1, dp_noise_seed=5)
    trainer = PrivateTrainer(model=tiny_llama(64), args=args, train_dataset=_data())
    trainer.train()
    assert trainer.accountant.history == [(4 / 32, 1.0, 3)]
    assert seen == [4, 4, 4]
    logged = [h["dp_epsilon"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(0 < e < math.inf for e in logged) and logged == sorted(logged)


def test_dp_trainer_caps_the_sampling_rate_at_one_and_refuses_an_empty_dataset(tmp_path):
    from hf_ext.federated import PrivateTrainer

    from .conftest import tiny_llama

    trainer = PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path, max_steps=1, dp_noise_seed=1),
                             train_dataset=_data(n=3))  # fmt: skip
    assert trainer.sample_rate == 1.0  # batch size 4 > 3 examples: every example in every batch
    trainer.train()
    assert trainer.accountant.history == [(1.0, 1.0, 1)]
    with pytest.raises(ValueError, match="non-empty"):
        PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path), train_dataset=_data(n=0))


def test_dp_sgd_on_a_dataset_smaller_than_the_batch_divides_by_its_size(tmp_path):
    """q = 1 when N < B: every example is in every batch, and the expected batch size q N is N (as in Opacus), so the
    step is the mean of the clipped per-sample gradients. Before, the sum was divided by B (a step N/B too small)."""
    from hf_ext.federated import PrivateTrainer, per_sample_gradients

    from .conftest import tiny_llama

    model = tiny_llama(64)
    data = _data(n=3)
    args = _args(tmp_path, max_steps=1, dp_noise_multiplier=0.0, dp_clip_norm=1e9, optim="sgd", learning_rate=1.0,
                 lr_scheduler_type="constant", weight_decay=0.0)  # fmt: skip
    trainer = PrivateTrainer(model=model, args=args, train_dataset=data)
    assert trainer.sample_rate == 1.0 and trainer.expected_batch_size == 3
    ids = torch.tensor(data["input_ids"])
    grads, _ = per_sample_gradients(model, ids, ids.clone())
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(start[name] - p.detach(), grads[name].mean(0), rtol=1e-4, atol=1e-7)


def test_a_fresh_call_after_a_resume_draws_batches_of_its_own(tmp_path):
    """After resuming a checkpoint of a trainer's second call, a further call that does not resume must not replay
    that second call's Poisson batches (it takes the next key)."""
    from hf_ext.federated import PrivateTrainer

    from .conftest import tiny_llama

    class Recording(PrivateTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.seen.append(sorted(map(tuple, inputs["input_ids"].tolist())))
            return super().training_step(model, inputs, num_items_in_batch)

    args = _args(tmp_path / "a", dp_noise_seed=3, max_steps=2, save_strategy="steps", save_steps=2)
    first = Recording(model=tiny_llama(64), args=args, train_dataset=_data())
    first.seen = []
    first.train()
    first.seen = []
    first.train()  # second call (key 1) writes checkpoint-2
    second_call = first.seen
    other = Recording(model=tiny_llama(64), args=args, train_dataset=_data())
    other.seen = []
    other.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    other.seen = []
    other.train()  # not a resume: a new key, not key 1 again
    assert len(other.seen) == 2 and other.seen != second_call


def test_a_second_call_with_a_noise_seed_draws_other_noise(tmp_path, monkeypatch):
    """With dp_noise_seed, a second train() call restarts at global step 0 but must not reuse the first call's noise
    seeds: every step of both calls gets a generator of its own."""
    import hf_ext.federated.trainer as trainer_mod
    from hf_ext.federated import PrivateTrainer

    from .conftest import tiny_llama

    seeds = []
    real = trainer_mod.dp_gradient
    monkeypatch.setattr(
        trainer_mod, "dp_gradient", lambda *a, **k: seeds.append(k["generator"].initial_seed()) or real(*a, **k)
    )
    trainer = PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path, dp_noise_seed=11), train_dataset=_data())
    trainer.train()
    trainer.train()
    assert len(seeds) == 4 and len(set(seeds)) == 4


def test_an_empty_poisson_batch_reports_a_zero_loss(tmp_path):
    """A Poisson batch may hold no example: the step then reports loss 0 (not the NaN mean of no losses)."""
    from hf_ext.federated import PrivateTrainer

    from .conftest import tiny_llama

    trainer = PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path, dp_noise_seed=2), train_dataset=_data())
    empty = {"input_ids": torch.zeros((0, 12), dtype=torch.long), "labels": torch.zeros((0, 12), dtype=torch.long)}
    loss = trainer.training_step(trainer.model, empty)
    assert float(loss) == 0.0


# ------------------------------------------------------------------------------------------ Flower run config


def test_run_config_parsing_is_strict():
    from hf_ext.federated.flower_task import RUN_CONFIG_DEFAULTS, parse_run_config

    cfg = parse_run_config({"learning-rate": 1, "num-partitions": 3})
    assert cfg["learning-rate"] == 1.0 and isinstance(cfg["learning-rate"], float)  # an int is a valid float
    assert cfg["num-partitions"] == 3
    assert {k: cfg[k] for k in RUN_CONFIG_DEFAULTS if k not in ("learning-rate", "num-partitions")} == {
        k: d for k, (_, d) in RUN_CONFIG_DEFAULTS.items() if k not in ("learning-rate", "num-partitions")
    }
    with pytest.raises(ValueError, match="Unknown run-config keys"):
        parse_run_config({"num-partition": 3})
    with pytest.raises(TypeError, match="num-partitions"):
        parse_run_config({"num-partitions": True})  # a bool is not an int here


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"num-partitions": 0, "secure-aggregation": False}, "num-partitions"),
        ({"round-timeout": 0.0}, "round-timeout"),
        ({"num-partitions": 3, "secagg-max-colluders": 3}, "secagg-max-colluders=3"),
    ],
)
def test_run_config_checks_refuse_unusable_values(overrides, match):
    from hf_ext.federated.flower_task import check_run_config, parse_run_config

    with pytest.raises(ValueError, match=match):
        check_run_config(parse_run_config(overrides))


def test_run_config_checks_accept_the_largest_colluder_count():
    """With n = 3 partitions, c = 1 gives the threshold (3 + 1) // 2 + 1 = 3 <= 3: allowed."""
    from hf_ext.federated import default_threshold
    from hf_ext.federated.flower_task import check_run_config, parse_run_config

    check_run_config(parse_run_config({"num-partitions": 3, "secagg-max-colluders": 1}))
    assert default_threshold(3, 1) == 3


def test_result_metadata_reports_incomplete_rounds_and_the_largest_epsilon():
    from types import SimpleNamespace

    from hf_ext.federated import FederatedArguments
    from hf_ext.federated.flower_task import result_metadata

    task = SimpleNamespace(fed_args=FederatedArguments(secure_aggregation=False), num_clients=3, config={"seed": 0})
    rounds = [
        {"num_clients": 3, "metrics": {"dp_epsilon_max": 2.0}},
        {"num_clients": 2, "metrics": {"dp_epsilon_max": 1.5}},
    ]
    meta = result_metadata(task, rounds)
    assert meta["all_rounds_complete"] is False
    assert meta["dp_epsilon_max"] == 2.0
    assert meta["num_rounds"] == 2 and meta["secure_aggregation"] == {"enabled": False}


@pytest.mark.parametrize("partition_id", [-1, 2])
def test_a_partition_id_outside_the_run_config_is_refused(partition_id):
    """partition-id -1 would silently select the last partition (another node's data)."""
    from hf_ext.federated.flower_task import FlowerTask, parse_run_config

    task = FlowerTask(parse_run_config({"num-partitions": 2}), None, None, None)
    with pytest.raises(ValueError, match="outside"):
        task.dataset_fn(partition_id)
