"""Audit fd16: a Flower node enforces its own `dp-max-epsilon` and the run's rounds on every train message (not only
once against the run config's plan), per-sample clipping refuses a non-finite gradient, `measure_memorization`
refuses a generation shorter than its window, and bools / fractions / infinities are refused as numbers."""

import dataclasses
import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from hf_ext.federated.flower import (
    PRIVACY_STATE_FILE,
    initial_global_state,
    make_client_app,
    make_server_app,
    node_state_path,
)
from hf_ext.federated.flower_task import planned_epsilon, run_config_client_app, task_from_run_config
from hf_ext.federated.privacy import PoissonBatchSampler, PrivacyAccountant
from hf_ext.federated.simulation import FederatedArguments

from .flower_harness import InProcessGrid

DP = {"local-steps": 1, "dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0}
ONE_OF_TWO = {"num-partitions": 2}  # a one-node grid serving partition 0 of the run config's 2


def _train_message(grid, state, r, node=1):
    content = RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({"server-round": r})})
    return grid.create_message(content, "train", node, "")


def _steps(context) -> int:
    return sum(n for _, _, n in json.loads(context.state["privacy"]["accountant"])["history"])


def test_a_plain_node_refuses_a_repeated_round_and_rounds_beyond_the_run(tmp_path):
    """Measured before the fix (audit repro_1, 1 round x 1 step planned, bound 1.05 x planned): the node trained
    round 1 again (epsilon 0.3699 > bound 0.3209) and rounds 2..5 (0.4890). Now it refuses both, before training."""
    rc = {"num-server-rounds": 1, "secure-aggregation": False, "work-dir": str(tmp_path / "w"), **DP}
    task = task_from_run_config(rc)
    bound = planned_epsilon(task, 0, 1e-5) * 1.05
    grid = InProcessGrid(
        run_config_client_app(),
        1,
        run_config=rc,
        errors_as_replies=True,
        node_config={"dp-max-epsilon": bound, **ONE_OF_TWO},
    )
    state = initial_global_state(task.model_fn, task.fed_args, task.seed)
    [reply] = grid.send_and_receive([_train_message(grid, state, 1)])
    assert not reply.has_error() and reply.content["metrics"]["dp_epsilon"] <= bound
    for r in (1, 2, 5, 0):
        [reply] = grid.send_and_receive([_train_message(grid, state, r)])
        assert reply.has_error()
    texts = [text for _, text in grid.client_errors]
    assert "round 1 of run 1, but this node (partition-id 0) already trained round 1" in texts[0]
    assert all("rounds 1..1 (run config `num-server-rounds`" in t for t in texts[1:])
    assert _steps(grid.contexts[1]) == 1  # nothing more was trained or spent


def test_a_restarted_node_refuses_a_round_it_trained_before_its_restart(tmp_path):
    """The last round trained is read back from the node's durable privacy record (a restarted SuperNode has an
    empty context.state); the next round still trains."""
    rc = {"num-server-rounds": 3, "secure-aggregation": False, "work-dir": str(tmp_path / "w"), **DP}
    task = task_from_run_config(rc)
    grid = InProcessGrid(run_config_client_app(), 1, run_config=rc, errors_as_replies=True, node_config=ONE_OF_TWO)
    state = initial_global_state(task.model_fn, task.fed_args, task.seed)
    grid.send_and_receive([_train_message(grid, state, 1)])
    grid.send_and_receive([_train_message(grid, state, 2)])
    grid.contexts[1].state = RecordDict()  # the SuperNode restarts
    [reply] = grid.send_and_receive([_train_message(grid, state, 2)])
    assert reply.has_error() and "already trained round 2" in grid.client_errors[-1][1]
    [reply] = grid.send_and_receive([_train_message(grid, state, 3)])
    assert not reply.has_error()
    saved = json.loads(open(node_state_path(rc["work-dir"], 1, 0, PRIVACY_STATE_FILE)).read())
    assert saved["last_round"] == 3 and sum(n for _, _, n in saved["accountant"]["history"]) == 3


def test_a_secagg_server_running_more_rounds_than_the_run_config_is_refused(tmp_path):
    """Measured before the fix (audit repro_1b: the project's own make_server_app with num_rounds=4 against a run
    config of 1 round): the nodes reported epsilon up to 1.4099 against their bound 1.13. Now every node refuses
    rounds 2..4 before training (those SecAgg+ rounds halt) and no node spent more than round 1's steps."""
    rc = {"num-server-rounds": 1, "secure-aggregation": True, "work-dir": str(tmp_path / "w"), **DP}
    task = task_from_run_config(rc)
    bound = max(planned_epsilon(task, p, 1e-5) for p in (0, 1)) * 1.05
    grid = InProcessGrid(
        run_config_client_app(), 2, run_config=rc, errors_as_replies=True, node_config={"dp-max-epsilon": bound}
    )
    server = make_server_app(task.model_fn, dataclasses.replace(task.fed_args, num_rounds=4), 2, seed=0)
    server(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))  # rounds 2-4 halt
    for r in (2, 3, 4):
        refused = sorted(n for n, t in grid.client_errors if f"round {r} of run 1, but the run has rounds 1..1" in t)
        assert refused == [1, 2]
    for context in grid.contexts.values():
        assert _steps(context) == 1


def test_the_epsilon_bound_is_checked_before_each_round_trains(tmp_path):
    """make_client_app (no run-level check) with a node bound between the epsilon after one and after two rounds: the
    node trains round 1 and refuses round 2 before training, naming `dp-max-epsilon`; the run fails."""
    rc = {"num-server-rounds": 2, "secure-aggregation": False, "work-dir": str(tmp_path / "w"), **DP}
    task = task_from_run_config(rc)
    one = planned_epsilon(dataclasses.replace(task, config={**task.config, "num-server-rounds": 1}), 0, 1e-5)
    two = planned_epsilon(task, 0, 1e-5)
    assert one < two
    app = make_client_app(task.model_fn, task.dataset_fn, task.fed_args, task.training_args)
    grid = InProcessGrid(
        app, 1, run_config=rc, errors_as_replies=True, node_config={"dp-max-epsilon": (one + two) / 2}
    )
    state = initial_global_state(task.model_fn, task.fed_args, task.seed)
    [reply] = grid.send_and_receive([_train_message(grid, state, 1)])
    assert not reply.has_error()
    [reply] = grid.send_and_receive([_train_message(grid, state, 2)])
    assert reply.has_error()
    text = grid.client_errors[-1][1]
    assert "Training round 2" in text and "above its node config `dp-max-epsilon=" in text
    assert _steps(grid.contexts[1]) == 1
    # the same bound without DP-SGD in the run is refused, as check_node_privacy does for the Flower App
    no_dp = dataclasses.replace(task.training_args, dp_clip_norm=None, dp_noise_multiplier=0.0)
    grid = InProcessGrid(
        make_client_app(task.model_fn, task.dataset_fn, task.fed_args, no_dp),
        1,
        errors_as_replies=True,
        node_config={"dp-max-epsilon": 10.0},
    )
    [reply] = grid.send_and_receive([_train_message(grid, state, 1)])
    assert reply.has_error() and "requires DP-SGD" in grid.client_errors[-1][1]


def test_planned_round_steps_match_the_trainer_in_epoch_mode(tmp_path):
    """With `local_steps <= 0` the planned steps of a round are the Trainer's `ceil(epochs x batches per epoch)`."""
    from hf_ext.federated.flower import planned_round_steps
    from hf_ext.federated.privacy import PrivacyAccountant
    from hf_ext.federated.simulation import apply_lora, train_client

    task = task_from_run_config({"work-dir": str(tmp_path / "w"), **DP})
    fed = dataclasses.replace(task.fed_args, local_steps=0, local_epochs=0.5)
    data = task.dataset_fn(0)
    q, steps = planned_round_steps(task.training_args, fed, len(data))
    model = apply_lora(task.model_fn(), fed, seed=task.training_args.seed)
    accountant = PrivacyAccountant(task.training_args.dp_accountant)
    state = initial_global_state(task.model_fn, fed, task.seed)
    train_client(model, state, data, task.training_args, fed, 0, 1, accountant=accountant)
    assert accountant.history == [(q, 1.0, steps)] and steps > 1


def test_per_sample_clipping_refuses_a_non_finite_gradient_naming_the_sample():
    """Measured before the fix (audit repro_4): norms [0.5, inf, nan] clipped to [0.5, nan, nan] and the noised batch
    sum was NaN. Now `clip_per_sample` (and so `dp_gradient`) refuses, as the client-level `clip_update` does."""
    from hf_ext.federated.privacy import clip_per_sample

    grads = {"w": torch.tensor([[0.3, 0.4], [float("inf"), 1.0], [0.0, 0.0]]), "b": torch.zeros(3, 1)}
    with pytest.raises(FloatingPointError, match=r"sample 1 of this batch \(of 3\) has a non-finite L2 norm \(inf\)"):
        clip_per_sample(grads, 1.0)
    grads["w"][2, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"sample 1 .*2 samples in all: \[1, 2\].*overflowed"):
        clip_per_sample(grads, 1.0)
    grads["w"][1:] = 5.0
    clipped, norms = clip_per_sample(grads, 1.0)  # finite gradients are clipped as before
    assert bool(torch.isfinite(clipped["w"]).all()) and float(clipped["w"].norm(dim=1).max()) <= 1.0


def test_measure_memorization_refuses_max_new_tokens_below_the_window():
    """Measured before the fix (audit repro_2): an oracle model that always generates the canary's continuation
    scored exact rate 1.0 with the default and max_new_tokens=60, and 0.0 with max_new_tokens=20 < window=50."""
    from hf_ext.federated.memorization import Canary, measure_memorization

    canaries = [Canary("c0", "some canary text", 1)]
    with pytest.raises(ValueError, match=r"`max_new_tokens=20` is below `window=50`.*>= 50"):
        measure_memorization(None, None, canaries, prefix_lengths=[10], window=50, max_new_tokens=20)
    for bad in (True, 0, 60.0, "60"):
        with pytest.raises(ValueError, match="`max_new_tokens` must be an integer >= 1 or None"):
            measure_memorization(None, None, canaries, prefix_lengths=[10], window=50, max_new_tokens=bad)
    with pytest.raises(ValueError, match="`window` must be an integer >= 1"):
        measure_memorization(None, None, canaries, prefix_lengths=[10], window=50.5)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: FederatedArguments(client_dp_clip_norm=True), "--client_dp_clip_norm must be a finite number > 0"),
        (
            lambda: FederatedArguments(client_dp_clip_norm=1.0, client_dp_noise_multiplier=True),
            "--client_dp_noise_multiplier must be a finite number >= 0",
        ),
        (lambda: FederatedArguments(local_steps=0, local_epochs=math.inf), "a finite --local_epochs > 0"),
        (lambda: FederatedArguments(local_epochs=True), "--local_epochs must be a number"),
        (lambda: _private_args(dp_clip_norm=True), "--dp_clip_norm must be a finite number > 0"),
        (lambda: _private_args(dp_clip_norm=1.0, dp_noise_multiplier=True), "--dp_noise_multiplier must be a finite"),
        (lambda: PoissonBatchSampler(10.7, 0.5, seed=0), r"`num_samples` \(the dataset size\) must be an integer"),
        (lambda: PoissonBatchSampler(True, 0.5, seed=0), "`num_samples`"),
        (lambda: PoissonBatchSampler(10, True, seed=0), "`sample_rate` must be a number in"),
        (lambda: PoissonBatchSampler(10, 0.5, num_batches=2.5, seed=0), "`num_batches` must be an integer >= 1"),
        (lambda: PrivacyAccountant().step(True, 1.0, 3), "`sample_rate` must be a number in"),
        (lambda: PrivacyAccountant().step(0.5, True, 3), "`noise_multiplier` must be a number"),
    ],
)
def test_bools_fractions_and_infinities_are_refused_as_numbers(tmp_path, build, match):
    """Measured before the fix (audit repro_5): each of these was accepted (True as 1, 10.7 examples as 10, infinite
    epochs failing later inside the Trainer)."""
    with pytest.raises((ValueError, TypeError), match=match):
        build()


def test_finite_numbers_are_still_accepted():
    assert FederatedArguments(client_dp_clip_norm=1, local_steps=0, local_epochs=2).local_epochs == 2
    args = _private_args(dp_clip_norm=1, dp_noise_multiplier=1)
    assert (args.dp_clip_norm, args.dp_noise_multiplier) == (1, 1)
    assert len(PoissonBatchSampler(10, 0.5, seed=0)) == 2
    accountant = PrivacyAccountant()
    accountant.step(1, 1.0, 3)
    assert accountant.history == [(1.0, 1.0, 3)]


def _private_args(**kwargs):
    from hf_ext.federated import PrivateTrainingArguments

    return PrivateTrainingArguments(output_dir="unused", max_grad_norm=0, report_to="none", **kwargs)
