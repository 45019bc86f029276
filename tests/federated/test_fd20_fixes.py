"""Pass-20 federated fixes.

F1: model inconsistency (Pasquini et al., CCS 2022): a malicious server sends every client but a victim an all-zero
LoRA adapter, so their updates are exactly 0 and the securely aggregated sum is the victim's update. In the in-process
protocol every client now signs the digest of the global state it received into its advertisement and aborts the
round, before any share or masked input leaves it, when a peer signed another digest.

F2: `FederatedSimulation.load_state` restored the history through plain JSON (int dict keys became str, tuples lists),
so a resumed run's `history[1]["mem"][10]` raised KeyError and later rounds mixed key types; the history is now saved
with its types and restored equal to the uninterrupted run's.
"""

import dataclasses
import json
import math

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
    assign_canaries,
    build_client_dataset,
    decode,
    encode,
    global_state_digest,
    make_canaries,
    measure_memorization,
    prepare_upload,
    round_training_config,
    secure_aggregate,
    split_by_column,
    train_client,
)
from hf_ext.federated.secure_aggregation import MODULUS, AdvertisedKeys
from hf_ext.federated.simulation import META_FILE, decode_history, encode_history

from .conftest import tiny_llama


def _norm(d):
    return sum(float(v.double().pow(2).sum()) for v in d.values()) ** 0.5


# ------------------------------------------------------------------------------- F1: model-inconsistency attack


def test_model_inconsistency_attack_on_trained_lora_clients_aborts_the_round(
    small_tokenizer, client_datasets, training_args
):
    """The audit's attack with real local training: clients 0 and 2 receive an all-zero adapter, the victim (1) the
    true global state. Their uploads are exactly 0, so a sum over clients that do not bind what they received is the
    victim's update (control); with the received states bound, the round aborts naming the inconsistency."""
    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    args = dataclasses.replace(training_args, seed=3)
    start = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, args).global_state
    victim = 1
    received = {c: start if c == victim else {k: torch.zeros_like(v) for k, v in start.items()} for c in range(3)}
    ups, ws = {}, {}
    for c in range(3):
        model = apply_lora(tiny_llama(len(small_tokenizer)), fed, seed=args.seed)
        state, n, _ = train_client(model, received[c], client_datasets[c], args, fed, c, 1)
        ups[c], ws[c] = prepare_upload(received[c], state, fed), float(n)
    assert _norm(ups[0]) == 0.0 and _norm(ups[2]) == 0.0 and _norm(ups[victim]) > 0

    # control: clients that bind nothing they received (all bind the empty state) let the server read the victim
    mean, total, _ = secure_aggregate(ups, ws)
    recovered = {k: mean[k] * total / ws[victim] for k in mean}
    err = _norm({k: recovered[k] - ups[victim][k].double() for k in mean})
    assert err < 1e-6 * _norm(ups[victim])

    # the defence: each client binds the state it received; the round aborts before anything is revealed
    with pytest.raises(
        SecAggAbort, match=r"inconsistent global state in round 1.*clients \[1\] signed [0-9a-f]{16}\."
    ):
        secure_aggregate(ups, ws, round_index=1, global_states=received)
    # an honest round from the same state goes through
    honest = {c: start for c in range(3)}
    mean, total, view = secure_aggregate(ups, ws, round_index=1, global_states=honest)
    assert {k.state_digest for k in view.public_keys.values()} == {global_state_digest(start)}


def _clients(received, rnd=4):
    identities, directory = IdentityDirectory.provision(sorted(received))
    return {
        u: SecAggClient(u, rnd, identity=identities[u], directory=directory, global_state=g)
        for u, g in received.items()
    }


def test_no_client_shares_or_uploads_anything_after_an_inconsistent_broadcast():
    """Step by step, as the server sees it: every client aborts at share_keys (nothing secret has left it yet), the
    victim never produces a masked input, and the server can neither rewrite the signed digests nor hide the
    inconsistency by showing the victim only part of the round."""
    g = {"base_model.layer.lora_A.weight": torch.randn(4, 8), "base_model.layer.lora_B.weight": torch.randn(8, 4)}
    zero = {k: torch.zeros_like(v) for k, v in g.items()}
    victim, t = 1, 2
    cl = _clients({0: zero, 1: g, 2: zero})
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    assert keys[victim].state_digest == global_state_digest(g) != keys[0].state_digest == global_state_digest(zero)

    with pytest.raises(SecAggAbort, match=r"Client 1: inconsistent global state.*clients \[0, 2\] signed"):
        cl[victim].share_keys(keys, t)
    for u in (0, 2):
        with pytest.raises(SecAggAbort, match=rf"Client {u}: inconsistent global state.*clients \[1\] signed"):
            cl[u].share_keys(keys, t)
    # the server rewrites the zero-state clients' digests to the victim's: their signatures no longer verify
    relabelled = {**keys, **{u: keys[u]._replace(state_digest=keys[victim].state_digest) for u in (0, 2)}}
    with pytest.raises(SecAggAbort, match="client 0 in round 4 are not signed"):
        cl[victim].share_keys(relabelled, t)
    # ... or hides the other clients from the victim: alone, no threshold is acceptable to it
    with pytest.raises(SecAggAbort, match="threshold=2 exceeds the 1 clients"):
        cl[victim].share_keys({victim: keys[victim]}, t)
    for c in cl.values():  # nothing left any client, and no round was recorded as served
        assert c.state.last_round is None and not c._b_shares and not c._s_shares
    with pytest.raises(RuntimeError, match="masked_input called out of order"):
        cl[victim].masked_input(g, 1.0, {})

    # the zero-state clients among themselves are consistent (their round is honest; the victim is not in it)
    pair = {u: keys[u] for u in (0, 2)}
    assert all(cl[u].share_keys(pair, t) for u in (0, 2))


def test_an_honest_round_is_bitwise_unchanged_by_the_binding():
    """With a consistent global state the aggregate is exactly the unmasked fixed-point sum, as before the binding
    (and as without `global_states`), with and without a dropout."""
    gen = torch.Generator().manual_seed(0)
    ids = [0, 1, 2, 3, 4]
    ups = {u: {"a": torch.randn(3, 5, generator=gen) * 0.1, "b": torch.randn(7, generator=gen)} for u in ids}
    ws = {u: float(u + 1) for u in ids}
    g = {"w": torch.randn(6, generator=gen).to(torch.bfloat16)}
    for dropped in ([], [3]):
        uploaders = [u for u in ids if u not in dropped]
        keys = sorted(ups[0])
        ref = torch.zeros(sum(ups[0][k].numel() for k in keys), dtype=torch.int64)
        for u in uploaders:
            vec = torch.cat([ups[u][k].reshape(-1).to(torch.float64) for k in keys]) * ws[u]
            ref = torch.remainder(ref + encode(vec, 24, num_summands=len(ids)), MODULUS)
        total = sum(ws[u] for u in uploaders)
        ref = decode(ref, 24) / total
        bound, unbound = (
            secure_aggregate(ups, ws, round_index=2, drop_before_upload=dropped, global_states=states)
            for states in ({u: g for u in ids}, None)
        )
        for mean, tot, _ in (bound, unbound):
            assert tot == total
            got = torch.cat([mean[k].reshape(-1) for k in keys])
            assert got.dtype == torch.float64 and torch.equal(got, ref)


def test_the_simulation_binds_the_state_every_client_trained_from(small_tokenizer, client_datasets, training_args):
    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, training_args)
    start = {k: v.clone() for k, v in sim.global_state.items()}
    sim.run()
    digests = {c: adv.state_digest for c, adv in sim.last_server_view.public_keys.items()}
    # with the round's training config (pass 21: the instructions are bound too)
    assert digests == {c: global_state_digest(start, round_training_config(training_args, fed, 1)) for c in range(3)}
    assert any(not torch.equal(sim.global_state[k], start[k]) for k in start)


def test_global_state_digest_covers_names_dtypes_shapes_and_bits():
    a = {"x": torch.arange(6, dtype=torch.float32), "y": torch.ones(2, 3)}
    d = global_state_digest(a)
    assert len(d) == 32 and global_state_digest({"y": a["y"].clone(), "x": a["x"].clone()}) == d  # insertion order
    assert global_state_digest({"x": a["x"], "y": torch.ones(3, 2).t()}) == global_state_digest(
        {"x": a["x"], "y": torch.ones(3, 2).t().contiguous()}
    )  # strides do not matter, the values do
    others = [
        {"x": a["x"], "z": a["y"]},  # name
        {"x": a["x"].double(), "y": a["y"]},  # dtype
        {"x": a["x"].reshape(2, 3), "y": a["y"]},  # shape, same bytes
        {"x": a["x"], "y": a["y"] * 2},  # values
        {"x": torch.where(a["x"] == 0, torch.tensor(-0.0), a["x"]), "y": a["y"]},  # -0.0 vs 0.0: one bit
        {"x": a["x"]},  # a missing tensor
        {},
    ]
    digests = {global_state_digest(o) for o in others}
    assert d not in digests and len(digests) == len(others)
    assert global_state_digest({"b": torch.tensor([True, False]), "h": torch.zeros(2, dtype=torch.bfloat16)})
    with pytest.raises(TypeError, match=r"entry 'x' is str -> list"):
        global_state_digest({"x": [1.0]})
    with pytest.raises(TypeError, match="mapping of tensor names"):
        global_state_digest([torch.zeros(1)])


def test_a_client_must_say_what_it_received():
    identities, directory = IdentityDirectory.provision([0, 1])
    with pytest.raises(ValueError, match="needs `global_state`"):
        SecAggClient(0, 1, identity=identities[0], directory=directory)
    ups = {0: {"a": torch.zeros(2)}, 1: {"a": torch.ones(2)}}
    with pytest.raises(ValueError, match=r"`global_states` must map every client in `updates` \(\[0, 1\]\)"):
        secure_aggregate(ups, {0: 1.0, 1: 1.0}, global_states={0: {}})
    # an advertisement without the digest (the old three fields) is refused
    c = SecAggClient(0, 1, identity=identities[0], directory=directory, global_state={})
    peer = SecAggClient(1, 1, identity=identities[1], directory=directory, global_state={})
    old = AdvertisedKeys(*peer.advertise_keys()[:3], b"")
    with pytest.raises(SecAggAbort, match="fields of 32, 32 and 0 bytes"):
        c.share_keys({0: c.advertise_keys(), 1: old}, 2)
    # a signature over the keys alone (what the old code signed), with the digest attached by the server
    adv = peer.advertise_keys()
    keys_only = identities[1].sign(b"hf_ext-secagg|advertise|round=1|client=1|" + adv.c_pk + adv.s_pk)
    with pytest.raises(SecAggAbort, match="not signed by its identity key together with the global-state digest"):
        c.share_keys({0: c.advertise_keys(), 1: adv._replace(signature=keys_only)}, 2)
    # bytes moved between the mask key and the digest keep the signed message, not the field lengths
    adv = peer.advertise_keys()
    shifted = adv._replace(s_pk=adv.s_pk[:31], state_digest=adv.s_pk[31:] + adv.state_digest)
    peer._directory.verify(1, 1, shifted)  # the same signed bytes
    with pytest.raises(SecAggAbort, match="fields of 32, 31 and 33 bytes"):
        c.share_keys({0: c.advertise_keys(), 1: shifted}, 2)
    with pytest.raises(SecAggAbort, match="no signature and global-state digest"):
        c.share_keys({0: c.advertise_keys(), 1: tuple(peer.advertise_keys()[:3])}, 2)


# ------------------------------------------------------------------------------- F2: typed history on resume


def _assert_same(a, b, where="history"):
    """`a == b` with the same type at every level: dict keys (in order), values, tuple vs list, numpy dtypes."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            _assert_same(ka, kb, f"{where} key {ka!r}")
            _assert_same(va, vb, f"{where}[{ka!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"
        if isinstance(a, float):
            assert math.copysign(1.0, a) == math.copysign(1.0, b), where


@pytest.fixture(scope="module")
def canary_clients(corpus, small_tokenizer):
    canaries = make_canaries(4, {2: 0.5, 1: 0.5}, num_words=10, seed=0)
    parts = split_by_column(corpus, "domain", 2)
    copies = assign_canaries(canaries, [len(p) for p in parts], "proportional")
    clients = [
        build_client_dataset(p.select(range(4)), [c.text for c in cs], small_tokenizer, 32)
        for p, cs in zip(parts, copies)
    ]
    return canaries, clients


def test_resumed_history_equals_the_uninterrupted_one_with_its_types(
    tmp_path, small_tokenizer, canary_clients, training_args
):
    """The docs' quick start: the round callback returns `measure_memorization(...)["per_replication"]` (int keys:
    replication counts, then prefix lengths); also a tuple and numpy values. Run 3 rounds saving each, load round 1
    into a fresh simulation and continue: the history equals the uninterrupted run's, with == and type by type."""
    from transformers import default_data_collator

    canaries, clients = canary_clients
    fed = FederatedArguments(num_rounds=3, local_steps=1)

    def on_round(r, sim):
        mem = measure_memorization(sim.model, small_tokenizer, canaries, (4, 8), window=8, seed=1)
        return {
            "mem": mem["per_replication"],
            "prefix_lengths": (4, 8),
            "num_probes": np.int64(len(mem["records"])),
            "loss_f32": np.float32(r / 3),
        }

    def make():
        return FederatedSimulation(
            tiny_llama(len(small_tokenizer)),
            clients,
            fed,
            training_args,
            data_collator=default_data_collator,
            round_callback=on_round,
        )

    full = make()
    full.run(save_dir=str(tmp_path / "rounds"))
    assert set(full.history[1]["mem"]) == {1, 2} and set(full.history[1]["mem"][2]["exact"]) == {4, 8}
    resumed = make()
    resumed.load_state(str(tmp_path / "rounds" / "round-1"))
    _assert_same(resumed.history, full.history[:2])  # what load_state restores
    assert resumed.history[1]["mem"][2]["exact"][8] == full.history[1]["mem"][2]["exact"][8]  # KeyError before
    resumed.run()
    assert resumed.history == full.history
    _assert_same(resumed.history, full.history)
    # the file is JSON, readable as such: plain str-keyed objects stay plain, the rest is tagged
    meta = json.loads((tmp_path / "rounds" / "round-1" / META_FILE).read_text())
    assert meta["history_encoding"] == "hf_ext-typed-json-v1" and meta["history"][1]["round"] == 1


def test_history_encoding_round_trips_types_and_refuses_what_it_cannot_restore():
    history = [
        {
            "round": 0,
            "mem": {10: {"exact": {10: 0.5, 20: -0.0}}, 1: {"exact": {}}},
            "t": (1, (2.5, "x"), [None, True]),
            "odd_keys": {(1, 2): "tuple", None: 1, 2.5: math.inf, False: "bool", "__hf_ext_type__": "a str key"},
            "nan": math.nan,
            "np": [np.float16(0.1), np.int8(-3), np.uint64(2**63), np.bool_(False), np.arange(6.0).reshape(2, 3)],
            "tensors": [torch.tensor([1.5, -2.0], dtype=torch.bfloat16), torch.tensor(3), torch.zeros(0, 2)],
        }
    ]
    text = json.dumps(encode_history(history))
    back = decode_history(json.loads(text, parse_constant=lambda c: {"NaN": math.nan}.get(c, float(c))))
    _assert_same(back, history)
    for bad, where in (
        ({1, 2}, r"history\[0\]\['m'\] is a builtins.set"),
        ([np.complex64(1)], r"history\[0\]\['m'\]\[0\] is a numpy.complex64"),
        ({3: object()}, r"history\[0\]\['m'\]\[3\] is a builtins.object"),
    ):
        with pytest.raises(TypeError, match=where + ".*restores exactly"):
            encode_history([{"m": bad}])


def test_a_callback_value_that_cannot_be_restored_is_refused_before_training(
    tmp_path, small_tokenizer, client_datasets, training_args
):
    fed = FederatedArguments(num_rounds=1, local_steps=1)
    sim = FederatedSimulation(
        tiny_llama(len(small_tokenizer)),
        client_datasets[:2],
        fed,
        training_args,
        round_callback=lambda r, s: {"s": {r}},
    )
    with pytest.raises(TypeError, match=r"history\[0\]\['s'\] is a builtins.set"):
        sim.run(save_dir=str(tmp_path / "rounds"))
    assert sim.round == 0  # nothing trained


def test_a_state_saved_before_the_typed_history_still_loads(tmp_path, small_tokenizer, client_datasets, training_args):
    fed = FederatedArguments(num_rounds=1, local_steps=1)
    sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets[:2], fed, training_args)
    sim.history = [{"round": 0, "mem": {10: 0.5}}]
    sim.save_state(str(tmp_path / "round-0"))
    meta_path = tmp_path / "round-0" / META_FILE
    meta = json.loads(meta_path.read_text())
    del meta["history_encoding"]  # what the older code wrote: the plain JSON of the history
    meta["history"] = [{"round": 0, "mem": {"10": 0.5}}]
    meta_path.write_text(json.dumps(meta))
    fresh = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets[:2], fed, training_args)
    fresh.load_state(str(tmp_path / "round-0"))
    assert fresh.history == [{"round": 0, "mem": {"10": 0.5}}]
    meta["history_encoding"] = "something-else"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="stores its history as 'something-else'"):
        fresh.load_state(str(tmp_path / "round-0"))
