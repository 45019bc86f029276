"""Pass-21 secure-aggregation fixes.

F1: the model-inconsistency defence bound the global state each client received, not the round's training
instructions: a malicious server could send every client the true model but `learning_rate=0` (or zero local steps)
to all but a victim, whose update was then the whole sum. Each client can now bind its round config into the signed
digest (`global_state_digest(state, config)`, `SecAggClient(round_config=...)`, `secure_aggregate(round_configs=...)`)
and the simulation binds the config its clients train with (`round_training_config`), so that round aborts.

F2: `global_state_digest` raised torch's RuntimeError on a lazy conjugate view (`x.conj()`), a negative view
(`x.conj().imag`) or a one-element slice whose stride is not 1 (`w[:1, 1]`); it now hashes the values they stand for.
"""

import dataclasses

import numpy as np
import pytest
import torch

from hf_ext.federated import (
    FederatedArguments,
    FederatedSimulation,
    IdentityDirectory,
    SecAggAbort,
    SecAggClient,
    apply_lora,
    global_state_digest,
    prepare_upload,
    round_training_config,
    secure_aggregate,
    train_client,
)

from .conftest import tiny_llama


def _norm(d):
    return sum(float(v.double().pow(2).sum()) for v in d.values()) ** 0.5


# ---------------------------------------------------------------------------- F1: training-config inconsistency


def test_learning_rate_zero_attack_on_trained_clients_aborts_the_round(
    small_tokenizer, client_datasets, training_args
):
    """The attack, as the server plays it with real local training: every client receives the true global state, but
    clients 0 and 2 are told `learning_rate=0`, the victim (1) the run's learning rate. Their uploads are exactly 0.

    On the old code, whose strongest binding was the global state (`secure_aggregate(..., global_states=...)`, no
    `round_configs`), the round completes and the mean times the total weight over the victim's weight is the victim's
    update (the control below, the old defence, recovers it to 1e-6). With each client's round config bound the round
    aborts before anything is revealed (old code: `round_training_config` and `round_configs` do not exist)."""
    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    args = dataclasses.replace(training_args, seed=3)
    start = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, args).global_state
    victim = 1
    told = {c: args if c == victim else dataclasses.replace(args, learning_rate=0.0) for c in range(3)}
    ups, ws = {}, {}
    for c in range(3):
        model = apply_lora(tiny_llama(len(small_tokenizer)), fed, seed=args.seed)
        state, n, _ = train_client(model, start, client_datasets[c], told[c], fed, c, 1)
        ups[c], ws[c] = prepare_upload(start, state, fed), float(n)
    assert _norm(ups[0]) == 0.0 and _norm(ups[2]) == 0.0 and _norm(ups[victim]) > 0

    # control (the old defence): the clients bind the state they received, which is the same for all: the round
    # completes and the server reads the victim's update off the mean
    same_state = {c: start for c in range(3)}
    mean, total, _ = secure_aggregate(ups, ws, round_index=1, global_states=same_state)
    recovered = {k: mean[k] * total / ws[victim] for k in mean}
    assert _norm({k: recovered[k] - ups[victim][k].double() for k in mean}) < 1e-6 * _norm(ups[victim])

    # the defence: each client also binds the instructions it trained with; the configs differ in learning_rate only
    configs = {c: round_training_config(told[c], fed, 1) for c in range(3)}
    differ = {k for k in configs[0] if configs[0][k] != configs[victim][k]}
    assert differ == {"training.learning_rate"} and configs[0] == configs[2]
    with pytest.raises(
        SecAggAbort,
        match=r"inconsistent global state in round 2: we received the state and round config with digest "
        r"[0-9a-f]{16} .*clients \[1\] signed [0-9a-f]{16}\. The server sent different models or training instructions",
    ):
        secure_aggregate(ups, ws, round_index=2, global_states=same_state, round_configs=configs)
    # an honest round (one config for all) goes through, and the advertisements carry the bound digest
    honest = {c: configs[victim] for c in range(3)}
    _, _, view = secure_aggregate(ups, ws, round_index=3, global_states=same_state, round_configs=honest)
    assert {k.state_digest for k in view.public_keys.values()} == {global_state_digest(start, configs[victim])}


def _clients(received, configs, rnd=4):
    identities, directory = IdentityDirectory.provision(sorted(received))
    return {
        u: SecAggClient(
            u, rnd, identity=identities[u], directory=directory, global_state=received[u], round_config=configs[u]
        )
        for u in received
    }


@pytest.mark.parametrize(
    "attack",
    [{"learning_rate": 0.0}, {"local_steps": 0}, {"local_epochs": 0.0}, {"warmup_steps": 10**6}],
    ids=["lr0", "no-steps", "no-epochs", "endless-warmup"],
)
def test_each_client_aborts_before_sharing_when_peers_were_told_other_instructions(attack):
    """Step by step, as the server sees it: the same state to all, an update-zeroing config to all but the victim.
    Every client aborts at share_keys (nothing secret has left it); the server can neither rewrite the signed digests
    nor mix a client that binds its config with one that does not."""
    g = {"base_model.layer.lora_A.weight": torch.randn(4, 8), "base_model.layer.lora_B.weight": torch.randn(8, 4)}
    normal = {"learning_rate": 5e-3, "local_steps": 10, "local_epochs": 1.0, "warmup_steps": 0, "round": 4}
    bad = {**normal, **attack}
    victim, t = 1, 2
    cl = _clients({u: g for u in range(3)}, {0: bad, 1: normal, 2: bad})
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    assert keys[victim].state_digest == global_state_digest(g, normal) != keys[0].state_digest
    assert keys[0].state_digest == global_state_digest(g, bad) != global_state_digest(g)  # the state alone agrees
    with pytest.raises(
        SecAggAbort, match=r"Client 1: inconsistent global state.*round config.*clients \[0, 2\] signed"
    ):
        cl[victim].share_keys(keys, t)
    for u in (0, 2):
        with pytest.raises(SecAggAbort, match=rf"Client {u}: inconsistent global state.*clients \[1\] signed"):
            cl[u].share_keys(keys, t)
    relabelled = {**keys, **{u: keys[u]._replace(state_digest=keys[victim].state_digest) for u in (0, 2)}}
    with pytest.raises(SecAggAbort, match="client 0 in round 4 are not signed"):
        cl[victim].share_keys(relabelled, t)
    for c in cl.values():
        assert c.state.last_round is None and not c._b_shares and not c._s_shares

    # a client that binds no config (the old call) and one that binds one never agree: binding must be all or none
    mixed = _clients({0: g, 1: g}, {0: None, 1: normal})
    keys = {u: c.advertise_keys() for u, c in mixed.items()}
    with pytest.raises(
        SecAggAbort, match=r"Client 0: inconsistent global state in round 4: we received the state with"
    ):
        mixed[0].share_keys(keys, t)
    # the old call binds the model only, with the digest of earlier versions; consistent configs complete key sharing
    same = _clients({u: g for u in range(3)}, {u: dict(normal) for u in range(3)})
    keys = {u: c.advertise_keys() for u, c in same.items()}
    assert all(same[u].share_keys(keys, t) for u in range(3))


def test_round_config_encoding_is_canonical_and_type_tagged():
    s = {"x": torch.arange(4, dtype=torch.float32), "y": torch.tensor([1 + 2j])}
    # config=None is the model-only digest of the previous version (a fixed test vector of the old code)
    old = "868ca29a48bfd9ef61b1230f1fe80f655d4cda20c36ea8dc936f26b5b3f4cc95"
    assert global_state_digest(s).hex() == old and global_state_digest(s, None).hex() == old
    base = {"learning_rate": 5e-3, "local_steps": 10, "mode": "factors", "dp": None, "lora": True}
    d = global_state_digest(s, base)
    assert global_state_digest(s, dict(reversed(list(base.items())))) == d  # insertion order does not matter
    assert global_state_digest({"y": s["y"].clone(), "x": s["x"].clone()}, dict(base)) == d
    variants = [
        {},  # an empty config: bound, unlike None
        {**base, "local_steps": 10.0},  # 10 vs 10.0
        {**base, "local_steps": "10"},  # 10 vs "10"
        {**base, "lora": 1},  # True vs 1
        {**base, "lora": 1.0},
        {**base, "lora": "True"},
        {**base, "dp": 0},  # None vs 0
        {**base, "dp": ""},  # None vs ""
        {**base, "dp": False},
        {k: v for k, v in base.items() if k != "dp"},  # None vs missing
        {**base, "learning_rate": 0.0},
        {**base, "learning_rate": -0.0},  # one bit
        {**base, "local_steps": -10},
        {**base, "local_steps": 2**70},  # beyond 64 bits
        {**base, "local_steps": 266},  # same low byte as 10
        {**base, "mode": "factors "},
        {**base, "mode": "fac", "tors": "x"},
        {**{k: v for k, v in base.items() if k != "mode"}, "mod": "efactors"},  # the name/value split moved
        {**base, "local_steps": -1, "x": None},
    ]
    digests = [global_state_digest(s, v) for v in variants]
    assert len(set(digests)) == len(variants) and d not in digests and bytes.fromhex(old) not in digests
    assert global_state_digest({}, {}) != global_state_digest({})
    # the state still matters under a config
    assert global_state_digest({"x": s["x"] * 2, "y": s["y"]}, base) != d

    for bad, name in [
        (np.float64(5e-3), "numpy.float64"),
        (np.int64(3), "numpy.int64"),
        ([1, 2], "builtins.list"),
        ({"a": 1}, "builtins.dict"),
        (torch.tensor(1.0), "torch.Tensor"),
        (b"x", "builtins.bytes"),
    ]:
        with pytest.raises(TypeError, match=rf"`round_config\['lr'\]` is {name} .*only int, float, bool, str or None"):
            global_state_digest(s, {"lr": bad})
    with pytest.raises(TypeError, match=r"`round_config` names must be str, got 1 \(int\)"):
        global_state_digest(s, {1: 2})
    with pytest.raises(TypeError, match="`round_config` must be a mapping"):
        global_state_digest(s, [("lr", 1.0)])


def test_secure_aggregate_checks_round_configs():
    ups = {0: {"a": torch.zeros(2)}, 1: {"a": torch.ones(2)}}
    with pytest.raises(ValueError, match=r"`round_configs` must map every client in `updates` \(\[0, 1\]\)"):
        secure_aggregate(ups, {0: 1.0, 1: 1.0}, round_configs={0: {}})
    with pytest.raises(ValueError, match=r"`round_configs` must map every client .* got list"):
        secure_aggregate(ups, {0: 1.0, 1: 1.0}, round_configs=[{}, {}])
    with pytest.raises(TypeError, match=r"`round_config\['lr'\]` is numpy.float32"):
        secure_aggregate(ups, {0: 1.0, 1: 1.0}, round_configs={u: {"lr": np.float32(1)} for u in ups})
    mean, _, _ = secure_aggregate(ups, {0: 1.0, 1: 1.0}, round_configs={u: {"lr": 1e-3} for u in ups})
    torch.testing.assert_close(mean["a"], torch.full((2,), 0.5, dtype=torch.float64))


def test_the_simulation_binds_the_training_config_every_client_trained_with(
    small_tokenizer, client_datasets, training_args
):
    fed = FederatedArguments(num_rounds=2, local_steps=1, secure_aggregation=True, client_dp_noise_seed=7)
    args = dataclasses.replace(training_args, dp_noise_seed=11)
    sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, args)
    for r in (1, 2):
        start = {k: v.clone() for k, v in sim.global_state.items()}
        sim.run_round()
        config = round_training_config(args, fed, r)
        digests = {c: adv.state_digest for c, adv in sim.last_server_view.public_keys.items()}
        assert digests == {c: global_state_digest(start, config) for c in range(3)}
    # the config is the one the clients derive their training arguments from, and changes with what they train with
    assert config["round"] == 2 and config["training.learning_rate"] == args.learning_rate
    assert config["federated.local_steps"] == 1 and config["training.warmup_steps"] == args.warmup_steps
    assert config["training.report_to"] == "[]"  # lists as sorted-key JSON text
    for changed_args, changed_fed in [
        (dataclasses.replace(args, learning_rate=0.0), fed),
        (dataclasses.replace(args, warmup_steps=100), fed),
        (args, dataclasses.replace(fed, local_steps=2)),
    ]:
        assert round_training_config(changed_args, changed_fed, 2) != config
    # per-client rates are the same text for every client, so no digest can catch a list that singles one out: they
    # are refused with secure aggregation (tests/federated/test_secagg_per_client_settings.py)
    with pytest.raises(ValueError, match="--client_learning_rates cannot be used with --secure_aggregation"):
        dataclasses.replace(fed, client_learning_rates="1e-9,5e-3,1e-9")
    # the opt-in DP noise seeds are secrets: never hashed into what the server and every peer see
    assert not [k for k in config if "noise_seed" in k]
    assert round_training_config(dataclasses.replace(args, dp_noise_seed=12), fed, 2) == config
    with pytest.raises(TypeError, match="FederatedArguments"):
        round_training_config(args, {"local_steps": 1}, 1)


# ---------------------------------------------------------------------------- F2: conjugate and negative views


def test_global_state_digest_hashes_conjugate_and_negative_views_by_value():
    x = torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex64)
    conj = x.conj()
    assert conj.is_conj()
    d = global_state_digest({"w": conj})
    assert d == global_state_digest({"w": conj.resolve_conj()}) == global_state_digest({"w": torch.conj_physical(x)})
    assert d != global_state_digest({"w": x})  # the conjugate is another state
    neg = torch.tensor([1 + 2j]).conj().imag  # a real, contiguous tensor with the negative bit set
    assert neg.is_neg() and neg.is_contiguous()
    assert global_state_digest({"w": neg}) == global_state_digest({"w": torch.tensor([-2.0])})
    # mu22 F8: a 0-dim negative view (contiguous, no stride to clone by) is hashed by value too
    neg0 = torch.tensor(1 + 2j).conj().imag
    assert neg0.is_neg() and neg0.dim() == 0
    assert global_state_digest({"w": neg0}) == global_state_digest({"w": torch.tensor(-2.0)})
    assert global_state_digest({"w": conj}, {"lr": 1.0}) == global_state_digest(
        {"w": conj.resolve_conj()}, {"lr": 1.0}
    )
    # a one-element slice of a wider tensor: "contiguous", yet its stride is not 1 (torch refused to view its bytes)
    w = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    for part in (w[:1, 1], w[1:2, :1].t(), torch.tensor([1 + 2j]).imag, torch.stack([x, x], 1)[:1, 0].conj()):
        assert part.numel() == 1 and part.is_contiguous() and part.stride()[-1] != 1
        fresh = torch.tensor(part.resolve_conj().tolist(), dtype=part.dtype)
        assert fresh.stride()[-1] == 1 and global_state_digest({"w": part}) == global_state_digest({"w": fresh})


def test_round_config_encoding_is_canonical_at_the_edges():
    """mu22: the round config's encoding in `global_state_digest` takes any int (byte-length boundaries such as a
    batch size of 128), floats by their binary64 bits (two rates equal in float32 differ), and length-prefixes every
    value (two configs whose entry bytes concatenate the same differ)."""
    import torch

    from hf_ext.federated.secure_aggregation import global_state_digest

    state = {"w": torch.zeros(2)}
    digests = {n: global_state_digest(state, {"batch": n}) for n in (127, 128, 255, 256, 2**31, 2**64, -128)}
    assert len(set(digests.values())) == len(digests)
    assert global_state_digest(state, {"lr": 5e-5}) != global_state_digest(state, {"lr": 5.0000000000001e-5})

    def entry(key, value):
        return len(key).to_bytes(8, "big") + key.encode() + b"s" + value.encode("utf-8", "surrogatepass")

    x = "P" + entry("b", "Q").decode("utf-8", "surrogatepass")
    y = "Q" + entry("c", "R").decode("utf-8", "surrogatepass")
    assert global_state_digest(state, {"a": x, "c": "R"}) != global_state_digest(state, {"a": "P", "b": y})
