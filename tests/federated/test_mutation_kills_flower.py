"""Mutation-testing gaps of the federated protocol wiring (simulation, Flower apps, run-config task, PrivateTrainer,
recipe), each checked against an independent reference: a hand-written FedAvg round of full-batch SGD steps in plain
torch, Google's dp-accounting composed directly, closed-form client-level DP-FedAvg, the documented flag table."""

import copy
import dataclasses
import functools
import itertools
import json

import pytest
import torch
from flwr.app import Context, RecordDict

from hf_ext.federated import (
    FederatedArguments,
    FederatedSimulation,
    PrivacyAccountant,
    PrivateTrainer,
    PrivateTrainingArguments,
    apply_goldfish,
    apply_lora,
    make_client_app,
    make_server_app,
)
from hf_ext.federated.flower import initial_global_state

from .conftest import tiny_llama, tiny_recipe_args
from .flower_harness import InProcessGrid

LENGTH = 16


def _rows(n: int, seed: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (n, LENGTH), generator=g).tolist()


def _dataset(rows):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * LENGTH] * len(rows), "labels": rows})


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,  # >= every client's size: one step is one full-batch gradient
        learning_rate=0.3,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        use_cpu=True,
        seed=3,
    )
    base.update(kw)
    return PrivateTrainingArguments(**base)


def _reference_round(model, global_state, datasets, lrs, goldfish=None):
    """One FedAvg round by hand: every client takes one full-batch SGD step from `global_state` (plain torch
    autograd), the server averages the returned tensors weighted by the clients' example counts (float64)."""
    states, sizes = [], []
    for ds, lr in zip(datasets, lrs):
        m = copy.deepcopy(model)
        own = m.state_dict()
        with torch.no_grad():
            for k, v in global_state.items():
                own[k].copy_(v)
        m.train()
        ids = torch.tensor(ds["input_ids"])
        labels = torch.tensor(ds["labels"])
        if goldfish is not None:
            labels = apply_goldfish(labels, goldfish[0], goldfish[1], ids)
        loss = m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        params = dict(m.named_parameters())
        grads = torch.autograd.grad(loss, [params[k] for k in global_state])
        states.append({k: (global_state[k] - lr * g).detach() for k, g in zip(global_state, grads)})
        sizes.append(len(ds))
    total = float(sum(sizes))
    return {
        k: (sum(n * s[k].double() for n, s in zip(sizes, states)) / total).to(global_state[k].dtype)
        for k in global_state
    }


def test_simulation_rounds_equal_hand_written_fedavg_of_sgd_steps(tmp_path, small_tokenizer):
    """Identical starts, per-client learning rates, example-count weights, the Goldfish flags reaching the client's
    loss, and the global state carried to round 2: against a plain-torch FedAvg of full-batch SGD steps."""
    vocab = len(small_tokenizer)
    datasets = [_dataset(_rows(3, 1, vocab)), _dataset(_rows(5, 2, vocab))]
    lrs = [0.2, 0.5]
    fed = FederatedArguments(num_rounds=2, local_steps=1, lora_r=2, lora_alpha=4.0, client_learning_rates="0.2,0.5")
    goldfish = (3, 4)  # k, context width (not the default 13)
    args = _args(tmp_path, goldfish_k=goldfish[0], goldfish_context_width=goldfish[1])
    sim = FederatedSimulation(tiny_llama(vocab, hidden=16), datasets, fed, args)
    model = copy.deepcopy(sim.model)
    expected = {k: v.clone() for k, v in sim.global_state.items()}
    for r in (1, 2):
        expected = _reference_round(model, expected, datasets, lrs, goldfish)
        sim.run(num_rounds=r)
        moved = max(float((sim.global_state[k] - expected[k]).abs().max()) for k in expected)
        assert moved < 2e-6, (r, moved)
    assert any("lora_A" in k and float(v.abs().max()) > 0 for k, v in expected.items())


def test_flower_rounds_equal_hand_written_fedavg_of_sgd_steps(tmp_path, small_tokenizer):
    """The Flower Message-API path (ClientApp + ServerApp through a grid): each node trains its own partition from
    the round's global state and the strategy weights by the reported example counts."""
    vocab = len(small_tokenizer)
    datasets = [_dataset(_rows(3, 1, vocab)), _dataset(_rows(5, 2, vocab))]
    fed = FederatedArguments(num_rounds=1, local_steps=1, lora_r=2, lora_alpha=4.0, client_learning_rates="0.2,0.5")
    args = _args(tmp_path)

    def model_fn():
        return tiny_llama(vocab, hidden=16)

    out = {}
    server = make_server_app(model_fn, fed, 2, seed=args.seed, on_finish=lambda s, r: out.update(s))
    grid = InProcessGrid(make_client_app(model_fn, lambda i: datasets[i], fed, args), 2)
    server(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    expected = initial_global_state(model_fn, fed, args.seed)
    model = apply_lora(model_fn(), fed, seed=args.seed)
    expected = _reference_round(model, expected, datasets, [0.2, 0.5])
    assert set(out) == set(expected)
    assert max(float((out[k] - expected[k]).abs().max()) for k in expected) < 2e-6


@functools.cache  # several tests ask for the same (q, sigma, steps, delta): dp-accounting once each
def _reference_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    import dp_accounting
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    acc = RdpAccountant()  # the tests train with dp_accountant="rdp" (fast); PLD composes the same events
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return acc.get_epsilon(delta)


def _dp_setup(tmp_path, small_tokenizer):
    vocab = len(small_tokenizer)
    datasets = [_dataset(_rows(6, 1, vocab)), _dataset(_rows(10, 2, vocab))]  # q = 2/6 and 2/10
    fed = FederatedArguments(num_rounds=2, local_steps=2, lora_r=2)
    args = _args(
        tmp_path,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        dp_clip_norm=1.0,
        dp_noise_multiplier=1.0,
        dp_accountant="rdp",
    )
    return vocab, datasets, fed, args, [2 / 6, 2 / 10]


def test_simulation_dp_accounting_composes_each_clients_steps_over_rounds_and_is_restored(tmp_path, small_tokenizer):
    """Each client's accountant holds exactly its own local steps of every round at its own q = B / N_c (not another
    client's, not halved), `dp_epsilon_max` is the largest client's epsilon, and loading a saved round restores its
    accountants: all against dp-accounting's PLD accountant composed directly."""
    vocab, datasets, fed, args, qs = _dp_setup(tmp_path, small_tokenizer)
    delta = args.dp_delta
    sim = FederatedSimulation(tiny_llama(vocab, hidden=16), datasets, fed, args)
    history = sim.run(save_dir=str(tmp_path / "rounds"))
    ref = [_reference_epsilon(q, 1.0, 4, delta) for q in qs]
    assert ref[0] > 1.2 * ref[1]  # the two clients are distinguishable
    for acc, e in zip(sim.accountants, ref):
        assert acc.steps == 4 and acc.get_epsilon(delta) == pytest.approx(e, rel=1e-3)
    assert history[-1]["dp_epsilon_max"] == pytest.approx(max(ref), rel=1e-3)
    assert [c["dp_epsilon"] for c in history[-1]["clients"]] == pytest.approx(ref, rel=1e-3)

    resumed = FederatedSimulation(tiny_llama(vocab, hidden=16), datasets, fed, args)
    resumed.load_state(str(tmp_path / "rounds" / "round-1"))
    for acc, q in zip(resumed.accountants, qs):
        assert acc.steps == 2 and acc.get_epsilon(delta) == pytest.approx(
            _reference_epsilon(q, 1.0, 2, delta), rel=1e-3
        )


def _run_flower_in_process(vocab, datasets, fed, args):
    """Flower's ServerApp and 2 ClientApps through the in-process grid; returns the grid and what the server app
    hands to `on_finish` (the legacy history with secure aggregation, Flower's `Result` without)."""

    def model_fn():
        return tiny_llama(vocab, hidden=16)

    out = {}
    grid = InProcessGrid(make_client_app(model_fn, lambda i: datasets[i], fed, args), 2)
    make_server_app(model_fn, fed, 2, seed=args.seed, on_finish=lambda state, result: out.update(result=result))(
        grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    )
    return grid, out["result"]


def test_flower_client_accountant_persists_across_rounds(tmp_path, small_tokenizer):
    """Each Flower node keeps its accountant in `context.state`: after 2 rounds of 2 DP-SGD steps it has composed 4
    steps at its own q, and the server's round-2 `dp_epsilon_max` (SecAgg+ path) is the largest client's epsilon."""
    vocab, datasets, fed, args, qs = _dp_setup(tmp_path, small_tokenizer)
    # max_weight near the clients' example counts: far above them, SecAgg+ quantization would swamp the update
    fed = dataclasses.replace(fed, secure_aggregation=True, secagg_max_weight=16.0)
    delta = args.dp_delta
    grid, history = _run_flower_in_process(vocab, datasets, fed, args)
    ref = [_reference_epsilon(q, 1.0, 4, delta) for q in qs]
    for node, e in zip(grid.node_ids, ref):
        acc = PrivacyAccountant(args.dp_accountant)
        acc.load_state_dict(json.loads(grid.contexts[node].state["privacy"]["accountant"]))
        assert acc.steps == 4 and acc.get_epsilon(delta) == pytest.approx(e, rel=1e-3)
    rounds = dict(history.metrics_distributed_fit["dp_epsilon_max"])
    assert rounds[2] == pytest.approx(max(ref), rel=1e-3)
    assert set(history.metrics_distributed_fit) == {"dp_epsilon_max"}  # no client's loss in the clear


def test_a_client_reports_its_training_loss_only_where_it_reveals_nothing_protected(tmp_path, small_tokenizer):
    """The client's training loss is computed from its records without clipping or noise: under DP-SGD a neighbouring
    dataset changes it deterministically (the server would tell D from D' with certainty), and under secure
    aggregation it is a per-client statistic in the clear. It is sent only with neither; the server then reports the
    example-weighted mean."""
    from hf_ext.federated.flower import reports_train_loss

    vocab, datasets, fed, args, _ = _dp_setup(tmp_path, small_tokenizer)
    plain = dataclasses.replace(args, dp_clip_norm=None, dp_noise_multiplier=0.0)
    assert reports_train_loss(fed, plain)
    assert not reports_train_loss(fed, args)
    assert not reports_train_loss(dataclasses.replace(fed, secure_aggregation=True), plain)
    _, result = _run_flower_in_process(vocab, datasets, dataclasses.replace(fed, num_rounds=1), plain)
    assert set(result.train_metrics_clientapp[1]) == {"train_loss"}


def test_flower_without_secagg_reports_the_largest_client_epsilon(tmp_path, small_tokenizer):
    """Without secure aggregation the round's metrics carry `dp_epsilon_max`, the largest client's epsilon, as the
    SecAgg+ path does (was: Flower's example-weighted mean of the epsilons, which understates the worst client, and a
    weighted mean of the partition ids)."""
    vocab, datasets, fed, args, qs = _dp_setup(tmp_path, small_tokenizer)
    assert not fed.secure_aggregation
    _, result = _run_flower_in_process(vocab, datasets, fed, args)
    ref = [_reference_epsilon(q, 1.0, 4, args.dp_delta) for q in qs]
    assert ref[0] > 1.2 * ref[1]  # a mean would differ from the max
    metrics = result.train_metrics_clientapp[2]
    assert metrics["dp_epsilon_max"] == pytest.approx(max(ref), rel=1e-3)
    assert set(metrics) == {"dp_epsilon_max"}  # no un-noised client loss reaches the server under DP-SGD


def test_dp_trainer_accounts_for_empty_poisson_batches(tmp_path, small_tokenizer):
    """An empty Poisson batch is still a step of the subsampled Gaussian mechanism (its noise is released): the
    accountant must compose every optimizer step at q = B / N."""
    from transformers import default_data_collator

    vocab = len(small_tokenizer)
    ds = _dataset(_rows(40, 4, vocab))
    model = apply_lora(tiny_llama(vocab, hidden=16), FederatedArguments(lora_r=2), seed=0)
    args = _args(
        tmp_path,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        max_steps=12,
        dp_clip_norm=1.0,
        dp_noise_multiplier=1.0,
        seed=5,
        dp_accountant="rdp",
    )
    trainer = PrivateTrainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
    loader = trainer.get_train_dataloader()
    loader.set_epoch(0)
    sizes = [len(b) for b in itertools.islice(iter(loader.batch_sampler), 12)]
    assert 0 in sizes  # guard: this seed draws an empty batch among the 12 steps
    trainer.train()
    assert trainer.accountant.steps == 12
    assert trainer.accountant.get_epsilon(args.dp_delta) == pytest.approx(
        _reference_epsilon(1 / 40, 1.0, 12, args.dp_delta), rel=1e-3
    )


def _client_level_dp_reference(g0, states, clip, num_clients):
    """DP-FedAvg by hand (noise 0): global + sum_c clip(u_c, C) / num_clients, u_c = client state - global."""
    out = {}
    clipped = []
    for s in states:
        u = {k: s[k].double() - g0[k].double() for k in g0}
        norm = float(torch.sqrt(sum((v**2).sum() for v in u.values())))
        clipped.append({k: v * min(1.0, clip / norm) for k, v in u.items()})
    for k in g0:
        out[k] = (g0[k].double() + sum(c[k] for c in clipped) / num_clients).to(g0[k].dtype)
    return out


def test_flower_client_level_dp_with_a_dropout_divides_by_the_federation_size(
    small_tokenizer, client_datasets, training_args
):
    """Client-level DP (noise 0, clipping active) with one of 3 nodes dropped: both Flower paths (Message API and
    SecAgg+) release global + sum of the survivors' clipped updates / 3 (the fixed federation size the noise is
    calibrated to), computed by hand from the states the survivors sent."""

    def model_fn():
        return tiny_llama(len(small_tokenizer))

    clip = 0.05

    def run(secure):
        fed = FederatedArguments(
            num_rounds=1, local_steps=1, lora_r=2, client_dp_clip_norm=clip, secure_aggregation=secure
        )
        out = {}
        grid = InProcessGrid(
            make_client_app(model_fn, lambda i: client_datasets[i], fed, training_args), 3, fail_nodes=[2]
        )
        make_server_app(model_fn, fed, 3, seed=training_args.seed, on_finish=lambda s, r: out.update(s))(
            grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        )
        return fed, grid, out

    fed, grid, plain = run(False)
    g0 = initial_global_state(model_fn, fed, training_args.seed)
    replies = sorted((m for m in grid.received if not m.has_error()), key=lambda m: m.metadata.src_node_id)
    assert [m.metadata.src_node_id for m in replies] == [1, 3]
    states = [m.content["arrays"].to_torch_state_dict() for m in replies]
    norms = [float(torch.sqrt(sum(((s[k] - g0[k]).double() ** 2).sum() for k in g0))) for s in states]
    assert min(norms) > 2 * clip  # clipping is active for both survivors
    expected = _client_level_dp_reference(g0, states, clip, 3)
    for k in expected:
        torch.testing.assert_close(plain[k], expected[k], atol=1e-7, rtol=0)
    _, _, secure = run(True)
    for k in expected:
        torch.testing.assert_close(secure[k], expected[k], atol=2e-5, rtol=0)
    step = max(float((expected[k] - g0[k]).abs().max()) for k in g0)
    assert step > 5e-4  # the 2e-5 tolerance is far below the update


def test_secagg_range_check_matches_flowers_clipping():
    """Flower's SecAgg+ clips `(w / max_weight) * update` to [-range, range]: an upload passes `check_secagg_range`
    exactly when that clipping leaves it unchanged."""
    from hf_ext.federated.flower import check_secagg_range

    fed = FederatedArguments(secagg_clipping_range=2.0, secagg_max_weight=100.0)
    for weight, peak in [(50, 3.9), (50, 4.1), (100, 1.9), (100, 2.1), (10, 19.0), (10, 21.0)]:
        update = {"w": torch.tensor([0.0, -peak, 0.5])}
        scaled = weight / fed.secagg_max_weight * update["w"]
        flower_leaves_it = bool(torch.equal(scaled.clamp(-2.0, 2.0), scaled))
        if flower_leaves_it:
            check_secagg_range(update, weight, fed)
        else:
            with pytest.raises(ValueError, match="secagg_clipping_range"):
                check_secagg_range(update, weight, fed)


def test_opt_in_noise_seeds_give_every_client_and_round_its_own_noise(tmp_path):
    """With the reproducible-noise opt-ins, DP-SGD noise seeds differ between clients and rounds, and the server's
    client-level DP noise differs between rounds (a repeated draw would correlate the noise it is meant to add)."""
    from hf_ext.federated.simulation import client_training_args, server_noise_generator

    args = _args(tmp_path, max_grad_norm=0.0, dp_clip_norm=1.0, dp_noise_multiplier=1.0, dp_noise_seed=4)
    fed = FederatedArguments(client_dp_clip_norm=1.0, client_dp_noise_multiplier=1.0, client_dp_noise_seed=4)
    seeds = {(c, r): client_training_args(args, fed, c, r).dp_noise_seed for c in range(3) for r in (1, 2)}
    assert len(set(seeds.values())) == 6
    draws = [torch.randn(8, generator=server_noise_generator(fed, r)) for r in (1, 2, 1)]
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


RUN_CONFIG = {
    "num-server-rounds": 3,
    "num-partitions": 3,
    "local-steps": 5,
    "batch-size": 6,
    "learning-rate": 0.02,
    "lora-r": 3,
    "lora-alpha": 5.0,
    "aggregation": "merge_then_average",
    "secure-aggregation": False,
    "secagg-max-weight": 77.0,
    "secagg-clipping-range": 3.0,
    "secagg-max-colluders": 1,
    "dp-clip-norm": 0.7,
    "dp-noise-multiplier": 1.3,
    "dp-delta": 1e-6,
    "dp-noise-seed": 0,
    "seed": 11,
    "docs-per-client": 2,
    "block-size": 24,
    "vocab-size": 300,
    "hidden-size": 16,
    "round-timeout": 120.0,
    "accept-partial-rounds": True,
}


def test_run_config_reaches_every_protocol_option(tmp_path):
    """Every run-config key (non-default values) lands in the option it names (docs/federated.md, the example app)."""
    from hf_ext.federated.flower_task import RUN_CONFIG_DEFAULTS, task_from_run_config

    cfg = {**RUN_CONFIG, "work-dir": str(tmp_path / "w")}
    assert set(cfg) | {"output-path"} == set(RUN_CONFIG_DEFAULTS)
    assert all(cfg[k] != RUN_CONFIG_DEFAULTS[k][1] for k in RUN_CONFIG)  # every value differs from its default
    task = task_from_run_config(cfg)
    f, a = task.fed_args, task.training_args
    assert (f.num_rounds, f.local_steps, f.lora_r, f.lora_alpha, f.aggregation) == (3, 5, 3, 5.0, "merge_then_average")
    assert (f.secure_aggregation, f.secagg_max_weight, f.secagg_clipping_range) == (False, 77.0, 3.0)
    assert f.secure_aggregation_max_colluders == 1
    assert (a.per_device_train_batch_size, a.learning_rate, a.seed) == (6, 0.02, 11)
    assert (a.dp_clip_norm, a.dp_noise_multiplier, a.dp_delta, a.dp_noise_seed, a.max_grad_norm) == (
        0.7,
        1.3,
        1e-6,
        0,
        0.0,
    )
    assert task.num_clients == 3 and task.seed == 11 and len(task.tokenizer) <= 300
    assert (task.config["round-timeout"], task.config["accept-partial-rounds"]) == (120.0, True)
    assert task_from_run_config({"work-dir": str(tmp_path / "w")}).training_args.dp_noise_seed is None  # -1: secret
    model = task.model_fn()
    assert model.config.hidden_size == 16
    torch.manual_seed(123)  # a different global RNG state must not change the model every process builds
    again = task.model_fn()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_run_config_partitions_are_disjoint_domain_groups(tmp_path):
    """Partition i is client i's group of domains (non-IID), cut to `docs-per-client` documents and packed."""
    from hf_ext.data import load_corpus, pack_dataset
    from hf_ext.federated import split_by_column
    from hf_ext.federated.flower_task import task_from_run_config

    task = task_from_run_config({**RUN_CONFIG, "work-dir": str(tmp_path / "w")})
    parts = split_by_column(load_corpus("train"), "domain", 3)
    blocks = []
    for i in range(3):
        docs = parts[i].select(range(2))
        expected = pack_dataset(docs, task.tokenizer, 24)
        got = task.dataset_fn(i)
        assert sorted(map(tuple, got["input_ids"])) == sorted(map(tuple, expected["input_ids"]))
        blocks.append(set(map(tuple, got["input_ids"])))
    assert not (blocks[0] & blocks[1]) and not (blocks[1] & blocks[2]) and not (blocks[0] & blocks[2])


def test_run_config_client_app_rebuilds_its_task_for_a_new_run_config(monkeypatch):
    """The run-config ClientApp builds its task once per run config (a SuperNode serves several runs): a new config
    must not be served by the previous run's app."""
    from types import SimpleNamespace

    from flwr.app import Message

    import hf_ext.federated.flower as flower
    from hf_ext.federated.flower_task import parse_run_config, run_config_client_app

    built = []

    def fake_make_client_app(model_fn, dataset_fn, fed_args, training_args, *a, **kw):
        built.append(fed_args.num_rounds)
        return lambda msg, context: fed_args.num_rounds

    def task_fn(run_config):
        fed = FederatedArguments(num_rounds=run_config["num-server-rounds"])
        return SimpleNamespace(
            model_fn=None, dataset_fn=None, fed_args=fed, training_args=None, config=parse_run_config(run_config)
        )

    monkeypatch.setattr(flower, "make_client_app", fake_make_client_app)
    app = run_config_client_app(task_fn)
    InProcessGrid(app, 1)  # sets Flower's task identity so that a Message can be built here
    msg = Message(RecordDict(), 1, "train")

    def context(rounds):
        return Context(
            run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={"num-server-rounds": rounds}
        )

    assert [app(msg, context(2)), app(msg, context(2)), app(msg, context(5))] == [2, 2, 5]
    assert built == [2, 5]


TINY = tiny_recipe_args(pretrain_steps=None, replication="3:0.5,1:0.5", max_eval_blocks=16, local_steps=2)


def _recording_recipe(monkeypatch, tmp_path, argv):
    """Run the recipe with the simulation and the memorization / exposure / eval functions replaced by recorders:
    what every run would train and measure, without training."""
    import hf_ext.federated as fedmod
    import hf_ext.recipes.federated as recipe
    import hf_ext.utils.evaluation as evaluation

    seen = {"sims": [], "mem": [], "exposure": [], "eval": []}

    class RecordingSimulation:
        def __init__(
            self,
            model,
            clients,
            fed_args,
            training_args,
            data_collator=None,
            processing_class=None,
            round_callback=None,
        ):
            self.model = model
            seen["sims"].append(
                dict(
                    model=copy.deepcopy(model.state_dict()),
                    clients=list(clients),
                    fa=fed_args,
                    ta=training_args,
                )
            )
            self.round_callback = round_callback
            self.accountants = []

        def run(self):
            return [{"round": 0, **self.round_callback(0, self)}]

    def fake_mem(model, tokenizer, canaries, prefix_lengths, **kw):
        seen["mem"].append(dict(model=model, prefix_lengths=list(prefix_lengths), **kw))
        reps = sorted({c.replication for c in canaries})
        return {
            "per_replication": {
                r: {
                    "exact_mean": 0.1 * r,
                    "approximate_mean": 0.2 * r,
                    "exact_worst": 0.3 * r,
                    "approximate_worst": 0.4 * r,
                    "bleu_mean": 0.5 * r,
                    "matching_tokens_mean": 0.6 * r,
                }
                for r in reps
            },
            "num_skipped": 0,
            "records": [{"canary_id": c.canary_id, "replication": c.replication} for c in canaries],
        }

    def fake_exposure(model, tokenizer, members, references):
        seen["exposure"].append(sorted(members))
        return float(len(seen["exposure"]))

    def fake_eval(model, dataset, *a, **kw):
        seen["eval"].append(dataset)
        return 1.0

    monkeypatch.setattr(fedmod, "FederatedSimulation", RecordingSimulation)
    monkeypatch.setattr(fedmod, "measure_memorization", fake_mem)
    monkeypatch.setattr(fedmod, "canary_exposure", fake_exposure)
    monkeypatch.setattr(evaluation, "causal_lm_eval_loss", fake_eval)
    monkeypatch.setattr(recipe, "write_outputs", lambda results, out: None)
    from hf_ext.recipes._common import parse_recipe_args

    args = parse_recipe_args(
        recipe.ARGUMENT_CLASSES,
        ["--output_dir", str(tmp_path / "out"), *TINY, *argv],
        resume="refuse",
    )
    return recipe.run(*args), seen


def test_recipe_defense_flags_reach_each_run(monkeypatch, tmp_path):
    """`--configs` entries become the documented FederatedArguments / PrivateTrainingArguments of each run, every
    run starts from the same pretrained base, the canary copies are in the clients' data, and each round's record maps
    the memorization / exposure results of the right canaries to the right keys."""
    argv = [
        "--configs",
        "full,lora+goldfish,lora+dp,lora_merge+clientdp,lora+secagg",
        "--pretrain_steps",
        "1",
        "--defense_goldfish_k",
        "3",
        "--defense_goldfish_context_width",
        "7",
        "--defense_dp_clip_norm",
        "0.7",
        "--defense_dp_noise_multiplier",
        "1.3",
        "--defense_client_clip_norm",
        "0.9",
        "--defense_client_noise_multiplier",
        "0.2",
        "--lora_learning_rate",
        "0.011",
        "--full_learning_rate",
        "0.007",
        "--window",
        "9",
        "--bleu_threshold",
        "0.6",
    ]
    results, seen = _recording_recipe(monkeypatch, tmp_path, argv)
    runs = {n: s for n, s in zip(results["runs"], seen["sims"])}
    assert list(runs) == ["full", "lora+goldfish", "lora+dp", "lora_merge+clientdp", "lora+secagg"]
    for name, s in runs.items():
        fa, ta = s["fa"], s["ta"]
        assert fa.use_lora == (name != "full")
        assert ta.learning_rate == (0.007 if name == "full" else 0.011)
        assert fa.aggregation == ("merge_then_average" if name.startswith("lora_merge") else "factors")
        assert (ta.goldfish_k, ta.goldfish_context_width if ta.goldfish_k else None) == (
            (3, 7) if "goldfish" in name else (None, None)
        )
        assert (ta.dp_clip_norm, ta.dp_noise_multiplier) == ((0.7, 1.3) if "+dp" in name else (None, 0.0))
        if "+dp" in name:
            assert ta.max_grad_norm == 0
        assert (fa.client_dp_clip_norm, fa.client_dp_noise_multiplier) == (
            (0.9, 0.2) if "clientdp" in name else (None, 0.0)
        )
        assert fa.secure_aggregation == ("secagg" in name)
        assert (fa.num_rounds, fa.local_steps) == (1, 2) and len(s["clients"]) == 2
    # every run starts from the same warmed-up base, which differs from the freshly initialised tiny model
    first = seen["sims"][0]["model"]
    assert all(all(torch.equal(first[k], s["model"][k]) for k in first) for s in seen["sims"])
    import hf_ext.recipes.federated as recipe
    from hf_ext.data import build_tokenizer

    tok = build_tokenizer(300)
    fresh = recipe.build_tiny_model(
        recipe.ModelArguments(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2), tok
    ).state_dict()
    assert any(not torch.equal(first[k], fresh[k]) for k in first)
    # every canary copy is a block of some client (its replication count in total)
    canaries = results["canaries"]
    clients = seen["sims"][0]["clients"]
    for c in canaries:
        ids = tok(c["text"], add_special_tokens=False)["input_ids"][:32]
        copies = sum(1 for ds in clients for row in ds["input_ids"] if list(row[: len(ids)]) == ids)
        assert copies == c["replication"]
    # memorization probe wiring and the record keys of round 0
    mem = seen["mem"][0]
    assert mem["prefix_lengths"] == [5] and mem["window"] == 9 and mem["bleu_threshold"] == 0.6
    record = results["runs"]["full"]["history"][0]
    for rep in (3, 1):
        for key, scale in (
            ("exact", 0.1),
            ("approx", 0.2),
            ("exact_worst", 0.3),
            ("approx_worst", 0.4),
            ("bleu", 0.5),
            ("match", 0.6),
        ):
            assert record[f"{key}_{rep}x"] == pytest.approx(scale * rep)
    by_rep = {rep: sorted(c["text"] for c in canaries if c["replication"] == rep) for rep in (3, 1)}
    assert seen["exposure"][:2] == [by_rep[3], by_rep[1]]
    assert (record["exposure_3x"], record["exposure_1x"]) == (1.0, 2.0)


def test_recipe_centralized_run_holds_all_clients_data_for_the_same_steps(monkeypatch, tmp_path):
    """`--setting centralized`: one client holding every federated client's blocks (canary copies included) and
    num_clients times the local steps per round."""
    results, seen = _recording_recipe(
        monkeypatch, tmp_path, ["--configs", "lora", "--setting", "centralized", "--pretrain_steps", "0"]
    )
    (s,) = seen["sims"]
    assert len(s["clients"]) == 1 and s["fa"].local_steps == 4
    assert len(s["clients"][0]) == sum(results["client_sizes"])


def test_recipe_evaluates_utility_on_documents_never_trained_on(monkeypatch, tmp_path):
    """The held-out utility (eval loss) must not contain the canaries: with `--canary_source test_docs` the canary
    bodies are test documents, which are trained on (replicated) and so must be excluded from the eval blocks."""
    from hf_ext.data import build_tokenizer

    results, seen = _recording_recipe(
        monkeypatch, tmp_path, ["--configs", "lora", "--pretrain_steps", "0", "--canary_words", "30"]
    )
    tok = build_tokenizer(300)
    text = " ".join(tok.decode(row) for row in seen["eval"][0]["input_ids"])
    eval_words = text.split()
    eval_grams = {tuple(eval_words[i : i + 8]) for i in range(len(eval_words) - 7)}
    assert len(seen["eval"][0]) >= 4
    for c in results["canaries"]:
        body = c["text"].split(": ", 1)[1].split()
        grams = {tuple(body[i : i + 8]) for i in range(1, len(body) - 8)}
        assert not (grams & eval_grams), c["canary_id"]
