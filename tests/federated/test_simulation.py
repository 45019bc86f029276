"""The in-process simulation: non-IID splits, LoRA vs full rounds, resume, invalid configurations."""

import dataclasses
import json
import os

import pytest
import torch

from hf_ext.federated import (
    FederatedArguments,
    FederatedSimulation,
    build_client_dataset,
    split_by_column,
)

from .conftest import tiny_llama


def test_split_by_domain_is_non_iid(corpus):
    parts = split_by_column(corpus, "domain", 3)
    domains = [set(p["domain"]) for p in parts]
    assert sum(len(p) for p in parts) == len(corpus)
    assert not (domains[0] & domains[1]) and not (domains[0] & domains[2]) and not (domains[1] & domains[2])
    with pytest.raises(ValueError, match="every client needs data"):
        split_by_column(corpus, "domain", 10)
    with pytest.raises(ValueError, match="not a dataset column"):
        split_by_column(corpus, "nope", 3)


def test_canaries_are_whole_blocks(corpus, small_tokenizer):
    text = "Record 1: " + " ".join(["quartz"] * 10)
    ds = build_client_dataset(corpus.select(range(2)), [text, text], small_tokenizer, 64)
    rows = [r for r in ds if -100 in r["labels"]]
    assert len(rows) == 2
    n = len(small_tokenizer(text, add_special_tokens=False)["input_ids"])
    assert rows[0]["labels"][:n] == rows[0]["input_ids"][:n] and rows[0]["labels"][n:] == [-100] * (64 - n)


def test_lora_factor_rounds_keep_the_base_and_merge_mode_updates_it(small_tokenizer, client_datasets, training_args):
    client_datasets = client_datasets[:2]
    sim = FederatedSimulation(
        tiny_llama(len(small_tokenizer)),
        client_datasets,
        FederatedArguments(num_rounds=1, local_steps=1),
        training_args,
    )
    base_before = {n: p.detach().clone() for n, p in sim.model.named_parameters() if not p.requires_grad}
    start = {k: v.clone() for k, v in sim.global_state.items()}
    sim.run()
    assert all(torch.equal(p, base_before[n]) for n, p in sim.model.named_parameters() if not p.requires_grad)
    assert any(not torch.equal(start[k], sim.global_state[k]) for k in start)
    assert all("lora_" in k for k in sim.global_state)

    merge = FederatedSimulation(
        tiny_llama(len(small_tokenizer)),
        client_datasets,
        FederatedArguments(num_rounds=1, local_steps=1, aggregation="merge_then_average"),
        training_args,
    )
    start = {k: v.clone() for k, v in merge.global_state.items()}
    merge.run()
    base_keys = [k for k in start if k.endswith("base_layer.weight")]
    assert base_keys and all(not torch.equal(start[k], merge.global_state[k]) for k in base_keys)
    assert all(torch.equal(start[k], merge.global_state[k]) for k in start if "lora_" in k)  # fresh adapter


def test_full_fine_tuning_round(small_tokenizer, client_datasets, training_args):
    client_datasets = client_datasets[:2]
    sim = FederatedSimulation(
        tiny_llama(len(small_tokenizer)),
        client_datasets,
        FederatedArguments(num_rounds=1, local_steps=1, use_lora=False),
        training_args,
    )
    n_params = len(list(sim.model.parameters()))
    assert len(sim.global_state) == n_params
    start = {k: v.clone() for k, v in sim.global_state.items()}
    hist = sim.run()
    assert hist[-1]["round"] == 1 and len(hist[-1]["clients"]) == 2
    assert sum(not torch.equal(start[k], sim.global_state[k]) for k in start) > n_params // 2


def test_resume_matches_uninterrupted(tmp_path, small_tokenizer, client_datasets, training_args):
    # bit-identical resume of DP runs needs the reproducible-noise opt-ins (the default noise is secret)
    fed = FederatedArguments(
        num_rounds=2, local_steps=1, client_dp_clip_norm=0.5, client_dp_noise_multiplier=0.1, client_dp_noise_seed=5
    )
    training_args = dataclasses.replace(
        training_args, dp_clip_norm=1.0, dp_noise_multiplier=0.5, max_grad_norm=0.0, dp_noise_seed=3
    )
    client_datasets = client_datasets[:2]
    full = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, training_args)
    full.run(save_dir=str(tmp_path / "rounds"))
    resumed = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, training_args)
    resumed.load_state(str(tmp_path / "rounds" / "round-1"))
    assert resumed.round == 1 and len(resumed.history) == 1
    resumed.run()
    for k, v in full.global_state.items():
        torch.testing.assert_close(resumed.global_state[k], v, atol=0, rtol=0)
    with pytest.raises(ValueError, match="not a saved federated round"):
        resumed.load_state(str(tmp_path))


def test_load_state_refuses_a_round_saved_with_another_dp_accountant(
    tmp_path, small_tokenizer, client_datasets, training_args
):
    """fl9 #4: a round saved with dp_accountant 'pld' and resumed with 'rdp' used to switch the resumed run to 'pld'
    silently (its epsilon was then not the one the run asked for); it is refused, and the simulation is left as it was."""
    fed = FederatedArguments(num_rounds=1, local_steps=1)
    args = dataclasses.replace(training_args, dp_clip_norm=1.0, dp_noise_multiplier=0.5, max_grad_norm=0.0)
    saved = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets[:2], fed, args)
    saved.accountants[0].step(0.5, 0.5, 3)
    saved.global_state = {k: v + 1 for k, v in saved.global_state.items()}
    saved.round = 1
    saved.save_state(str(tmp_path / "round-1"))
    resumed = FederatedSimulation(
        tiny_llama(len(small_tokenizer)),
        client_datasets[:2],
        fed,
        dataclasses.replace(args, dp_accountant="rdp"),
    )
    start = {k: v.clone() for k, v in resumed.global_state.items()}
    with pytest.raises(ValueError, match="accountant is 'pld' but this run's dp_accountant is 'rdp'"):
        resumed.load_state(str(tmp_path / "round-1"))
    assert (
        resumed.round == 0
        and [a.accountant for a in resumed.accountants] == ["rdp", "rdp"]
        and resumed.accountants[0].history == []
    )
    assert all(torch.equal(v, start[k]) for k, v in resumed.global_state.items())


def test_invalid_configurations(small_tokenizer, client_datasets, training_args):
    model = tiny_llama(len(small_tokenizer))
    with pytest.raises(ValueError, match="Client 1 has no data"):
        FederatedSimulation(
            model, [client_datasets[0], client_datasets[0].select([])], FederatedArguments(), training_args
        )
    with pytest.raises(ValueError, match="one per client"):
        FederatedSimulation(
            model, client_datasets, FederatedArguments(client_learning_rates="1e-3,1e-3"), training_args
        )
    with pytest.raises(ValueError, match="aggregation"):
        FederatedArguments(aggregation="median")
    with pytest.raises(ValueError, match="client_dp_clip_norm"):
        FederatedArguments(client_dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="client_dp_noise_multiplier"):  # NaN noise would silently add nothing
        FederatedArguments(client_dp_clip_norm=1.0, client_dp_noise_multiplier=float("nan"))
    with pytest.raises(ValueError, match="client_dp_clip_norm"):
        FederatedArguments(client_dp_clip_norm=float("inf"), client_dp_noise_multiplier=1.0)
    with pytest.raises(ValueError, match="num_rounds"):
        FederatedArguments(num_rounds=0)
    with pytest.raises(TypeError, match="PrivateTrainingArguments"):
        FederatedSimulation(model, client_datasets, FederatedArguments(), object())


def test_local_steps_or_epochs(training_args):
    from hf_ext.federated.simulation import client_training_args

    steps = client_training_args(training_args, FederatedArguments(local_steps=7, client_learning_rates="1,2"), 1, 3)
    assert steps.max_steps == 7 and steps.learning_rate == 2.0 and steps.seed == training_args.seed + 3001
    assert steps.output_dir.endswith("client-1")
    epochs = client_training_args(training_args, FederatedArguments(local_steps=0, local_epochs=0.5), 0, 1)
    assert epochs.max_steps == -1 and epochs.num_train_epochs == 0.5
    with pytest.raises(ValueError, match="local"):
        FederatedArguments(local_steps=0, local_epochs=0)


def test_mismatched_adapter_is_rejected_by_the_client(small_tokenizer):
    from hf_ext.federated import apply_lora, exchange_keys, get_exchange_state, set_exchange_state

    r4 = apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_r=4), seed=0)
    r8 = apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_r=8), seed=0)
    state8 = get_exchange_state(r8, exchange_keys(r8, "factors"))
    with pytest.raises(ValueError, match="LoRA rank"):
        set_exchange_state(r4, state8)
    qv = apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_target_modules="q_proj,v_proj"), seed=0)
    with pytest.raises(ValueError, match="adapter configuration"):
        set_exchange_state(qv, state8)


def test_secure_aggregation_refuses_frac_bits_that_lose_the_update(small_tokenizer, client_datasets, training_args):
    """fl9 #1: with few fixed-point bits the in-process secure aggregation rounded the weighted updates away, silently
    (0 or 4 bits under client-level DP: the round's update was exactly 0). The range is checked when the arguments are
    built, and each upload's rounding error by the Flower SecAgg+ rule: above 0.5 refused, above 1e-2 a warning."""
    import warnings

    from hf_ext.federated.simulation import check_fixed_point_precision

    for bits in (-1, 41, 2.5, True):
        with pytest.raises(ValueError, match=r"--secure_aggregation_frac_bits must be an integer in \[0, 40\]"):
            FederatedArguments(secure_aggregation_frac_bits=bits)
    for bits in (0, 40):  # both ends of [0, 40] build
        assert FederatedArguments(secure_aggregation_frac_bits=bits).secure_aggregation_frac_bits == bits
    fed = FederatedArguments(
        num_rounds=1,
        local_steps=1,
        secure_aggregation=True,
        secure_aggregation_frac_bits=0,
        client_dp_clip_norm=1.0,
        client_dp_noise_seed=0,
    )
    sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets[:2], fed, training_args)
    start = {k: v.clone() for k, v in sim.global_state.items()}
    with pytest.raises(ValueError, match=r"client 0's upload .*--secure_aggregation_frac_bits 0\).* Refused"):
        sim.run()
    assert sim.round == 0 and all(torch.equal(v, start[k]) for k, v in sim.global_state.items())
    update = {"w": torch.full((1000,), 1e-3)}  # relative rounding error bound 500 * 2^-bits at weight 1
    with pytest.warns(UserWarning, match="raise --secure_aggregation_frac_bits"):
        check_fixed_point_precision(update, 1.0, dataclasses.replace(fed, secure_aggregation_frac_bits=12), 0)
    # the half-step bound 500 * 2^-bits between the thresholds: 9 bits (0.977 > 0.5) refused, 10 bits (0.488) warned
    with pytest.raises(ValueError, match="Refused"):
        check_fixed_point_precision(update, 1.0, dataclasses.replace(fed, secure_aggregation_frac_bits=9), 0)
    with pytest.warns(UserWarning, match="raise --secure_aggregation_frac_bits"):
        check_fixed_point_precision(update, 1.0, dataclasses.replace(fed, secure_aggregation_frac_bits=10), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_fixed_point_precision(update, 1.0, dataclasses.replace(fed, secure_aggregation_frac_bits=24), 0)


def test_secure_aggregation_round_equals_plain_and_hides_each_update(small_tokenizer, client_datasets, training_args):
    """Three clients, one round with SecAgg (key agreement, AES-CTR masks, Shamir-shared self masks): the global
    adapter equals plain FedAvg up to fixed-point rounding, and the server's view hides every single update."""
    from hf_ext.federated import decode

    def run(secure):
        fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=secure)
        sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, training_args)
        start = {k: v.clone() for k, v in sim.global_state.items()}
        sim.run()
        return sim, start

    plain, start = run(False)
    secure, _ = run(True)
    for k, v in plain.global_state.items():
        torch.testing.assert_close(secure.global_state[k], v, atol=1e-6, rtol=0)
    assert any(not torch.equal(start[k], plain.global_state[k]) for k in start)
    view = secure.last_server_view
    assert sorted(view.masked) == [0, 1, 2] and view.threshold == 2
    # every client signed its keys with its identity and recorded the round it served (kept with the checkpoint)
    for u in range(3):
        secure.secagg_directory.verify(u, 1, view.public_keys[u])
    assert [secure.secagg_client_states[u].last_round for u in range(3)] == [1, 1, 1]
    secure.save_state(str(training_args.output_dir) + "/sim-state")
    secure.secagg_client_states = {}
    secure.load_state(str(training_args.output_dir) + "/sim-state")
    assert [secure.secagg_client_states[u].last_round for u in range(3)] == [1, 1, 1]
    keys = sorted(k for k in start if "lora_B" in k)  # A is not trained in one step from B = 0
    mean_delta = torch.cat([(plain.global_state[k] - start[k]).double().flatten() for k in keys])
    assert float(mean_delta.abs().max()) > 0
    for u in range(3):
        seen = torch.cat([decode(view.masked[u][k]).flatten() for k in keys])
        corr = float(torch.corrcoef(torch.stack([seen, mean_delta]))[0, 1])
        assert abs(corr) < 4 / mean_delta.numel() ** 0.5  # chance level
        assert float(seen.abs().median()) > 1e6  # uniform residues, not an update
    with pytest.raises(ValueError, match="secure_aggregation_threshold"):  # 4 of 3 clients cannot unmask
        FederatedSimulation(
            tiny_llama(len(small_tokenizer)),
            client_datasets,
            FederatedArguments(secure_aggregation=True, secure_aggregation_threshold=4),
            training_args,
        )


def test_run_num_rounds_must_be_none_or_positive(small_tokenizer, client_datasets, training_args):
    sim = FederatedSimulation(
        tiny_llama(len(small_tokenizer)), client_datasets[:2], FederatedArguments(num_rounds=1), training_args
    )
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_rounds"):
            sim.run(num_rounds=bad)
    with pytest.raises(TypeError, match="num_rounds"):
        sim.run(num_rounds=1.5)
    assert sim.round == 0 and sim.history == []  # nothing ran


class _CrashingFile:
    """A file whose first write stores part of the text and then fails, like a crash mid-write."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, text):
        self.fh.write(text[:40])
        self.fh.flush()
        raise OSError("simulated crash while writing")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def _one_round_two_clients(small_tokenizer, client_datasets, training_args):
    return FederatedSimulation(
        tiny_llama(len(small_tokenizer)), client_datasets[:2], FederatedArguments(num_rounds=1), training_args
    )


def test_save_state_crash_keeps_the_previous_checkpoint(
    tmp_path, small_tokenizer, client_datasets, training_args, monkeypatch
):
    """A crash while writing the JSON half of a round folder must leave the previous, matching pair loadable."""
    import builtins

    from hf_ext.federated.simulation import META_FILE

    def make():
        return _one_round_two_clients(small_tokenizer, client_datasets, training_args)

    sim = make()
    path = str(tmp_path / "round-1")
    sim.save_state(path)
    good = {k: v.clone() for k, v in sim.global_state.items()}
    sim.global_state = {k: v + 1.0 for k, v in sim.global_state.items()}  # a newer state ...
    sim.round = 7
    real_open = builtins.open

    def crashing_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return _CrashingFile(fh) if str(file).endswith(META_FILE) and "w" in mode else fh

    monkeypatch.setattr(builtins, "open", crashing_open)
    with pytest.raises(OSError, match="simulated crash"):
        sim.save_state(path)  # ... whose save crashes half-way through the JSON
    monkeypatch.setattr(builtins, "open", real_open)
    restored = make()
    restored.load_state(path)
    assert restored.round == 0
    for k, v in good.items():
        torch.testing.assert_close(restored.global_state[k], v, atol=0, rtol=0)
    assert sorted(os.listdir(tmp_path)) == ["round-1"]  # no temporary folder left behind
    # a folder whose JSON is truncated (e.g. copied by hand) gives a clear error, not a bare JSONDecodeError
    with real_open(os.path.join(path, META_FILE)) as fh:
        text = fh.read()
    with real_open(os.path.join(path, META_FILE), "w") as fh:
        fh.write(text[:30])
    with pytest.raises(ValueError, match="incomplete or corrupted"):
        make().load_state(path)
    with pytest.raises(json.JSONDecodeError):  # (what it was before)
        json.loads(text[:30])


def test_save_state_killed_between_its_renames_recovers_the_previous_round(
    tmp_path, small_tokenizer, client_datasets, training_args, monkeypatch
):
    """The previous round is moved aside before the new folder is renamed in: a failure there puts it back, and a
    process killed in that window leaves it where `load_state` finds and restores it."""

    def make():
        return _one_round_two_clients(small_tokenizer, client_datasets, training_args)

    sim = make()
    path = str(tmp_path / "state")
    sim.save_state(path)
    os.mkdir(tmp_path / "plain")  # the round folder is as readable as a plain one (not tempfile's 0700)
    assert os.stat(path).st_mode == os.stat(tmp_path / "plain").st_mode
    os.rmdir(tmp_path / "plain")
    good = {k: v.clone() for k, v in sim.global_state.items()}
    sim.global_state = {k: v + 1.0 for k, v in sim.global_state.items()}
    real_rename = os.rename

    def failing_rename(src, dst):
        if os.path.basename(str(src)).startswith(".state.tmp-"):
            raise OSError("simulated failure of the final rename")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="final rename"):
        sim.save_state(path)
    monkeypatch.setattr(os, "rename", real_rename)
    assert sorted(os.listdir(tmp_path)) == ["state"]  # the previous round is back, nothing left behind
    restored = make()
    restored.load_state(path)
    for k, v in good.items():
        torch.testing.assert_close(restored.global_state[k], v, atol=0, rtol=0)

    # a kill in that window: the previous round sits in the moved-aside folder and `path` is gone
    aside = tmp_path / ".state.old-abc123"
    aside.mkdir()
    real_rename(path, str(aside / "state"))
    restored = make()
    restored.load_state(path)
    for k, v in good.items():
        torch.testing.assert_close(restored.global_state[k], v, atol=0, rtol=0)
    assert sorted(os.listdir(tmp_path)) == ["state"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("num_rounds", 2.5),
        ("local_steps", 2.5),
        ("lora_r", 4.0),
        ("secure_aggregation_threshold", 2.5),
        ("lora_dropout", 1.5),
        ("lora_dropout", float("nan")),
        ("lora_dropout", 1.0),  # [0, 1): a dropout of 1 drops every LoRA input
        ("client_learning_rates", "1e-3,nan"),
        ("client_learning_rates", "1e-3,0"),  # a rate of 0 would silently freeze that client
        ("client_learning_rates", "1e-3,-1e-3"),
        ("client_learning_rates", "1e-3,inf"),
        ("secagg_clipping_range", float("inf")),
        ("secagg_max_weight", float("nan")),
    ],
)
def test_federated_arguments_refuse_fractional_counts_and_non_finite_rates(field, value):
    """API-only values that used to pass: 2.5 rounds ran as 2 or 3, an infinite client learning rate trained, an
    infinite SecAgg+ range quantized every update to nothing, a dropout of 1.5 failed later inside PEFT."""
    with pytest.raises(ValueError, match=f"--{field}"):
        FederatedArguments(**{field: value})
