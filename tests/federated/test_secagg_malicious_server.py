"""Secure aggregation against a MALICIOUS server, written as the attacker (the attacks of the attacker review):

1. key substitution: the server replaces the public keys of a victim's peers with keys of its own and decrypts every
   share of the victim's secrets (no colluder needed);
2. false dropout with colluders: the server tells some honest clients that the victim dropped and others that it
   survived, and colluding clients hand over both kinds of shares;
3. differencing: the server re-runs a round over a different subset of clients and subtracts the two sums.

Each attack is shown to work where the defence is off (a control inside the test) and to be refused by honest
clients where it is on; the honest protocol still sums exactly and survives dropouts below the threshold.
"""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_ext.federated import (
    AdvertisedKeys,
    FederatedArguments,
    IdentityDirectory,
    SecAggAbort,
    SecAggClient,
    SecAggClientState,
    decode,
    default_threshold,
    prg_residues,
    quantization_error_bound,
    secure_aggregate,
    shamir_combine,
)
from hf_ext.federated.secure_aggregation import (
    MODULUS,
    _agree,
    _pair_info,
    _point,
    _private_from_bytes,
    _survivors_message,
)


def _update(seed, size=64):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(size, generator=g) * 0.05}


def _vec(d):
    return torch.cat([d[k].reshape(-1) for k in sorted(d)])


def _unmask_one(victim, y, b, s_sk, peer_s_pks, round_index):
    """What the server does once it holds both secrets of `victim`: strip its self mask and all its pairwise masks."""
    n = y.numel()
    y = torch.remainder(y - prg_residues(b, n), MODULUS)
    for v, s_pk in peer_s_pks.items():
        m = prg_residues(_agree(s_sk, s_pk, _pair_info(victim, v, round_index)), n)
        y = torch.remainder(y - m if victim < v else y + m, MODULUS)
    return decode(y)


# ------------------------------------------------------------------------------------------------ 1. key substitution


def test_substituted_forged_or_replayed_keys_abort_the_round_before_any_share_leaves():
    ids, rnd, t = [0, 1, 2, 3, 4], 5, 3
    identities, directory = IdentityDirectory.provision(ids)  # provisioned out of band: the server cannot edit it
    victim = SecAggClient(0, rnd, identity=identities[0], directory=directory, global_state={})
    honest = {v: SecAggClient(v, rnd, identity=identities[v], directory=directory, global_state={}) for v in ids[1:]}
    genuine = {0: victim.advertise_keys(), **{v: c.advertise_keys() for v, c in honest.items()}}

    # (i) the review's attack: the server plays every peer with key pairs (and identities) of its own
    server_ids, server_dir = IdentityDirectory.provision(ids[1:])
    fakes = {v: SecAggClient(v, rnd, identity=server_ids[v], directory=server_dir, global_state={}) for v in ids[1:]}
    forged = {0: genuine[0], **{v: f.advertise_keys() for v, f in fakes.items()}}
    with pytest.raises(SecAggAbort, match="not signed by its identity key"):
        victim.share_keys(forged, t)
    # (ii) a genuine advertisement of peer 1 from an earlier round, replayed into this one
    old = SecAggClient(1, rnd - 1, identity=identities[1], directory=directory, global_state={}).advertise_keys()
    with pytest.raises(SecAggAbort, match="client 1 in round 5"):
        victim.share_keys({**genuine, 1: old}, t)
    # (iii) peer 2's genuine advertisement presented as peer 1's (and 1's as 2's)
    with pytest.raises(SecAggAbort, match="not signed"):
        victim.share_keys({**genuine, 1: genuine[2], 2: genuine[1]}, t)
    # (iv) keys without a signature, (v) a client the directory does not know (a sybil of the server)
    with pytest.raises(SecAggAbort, match="no signature"):
        victim.share_keys({**genuine, 1: genuine[1][:2]}, t)
    sybil = SecAggClient(
        9, rnd, identity=server_ids[1], directory=IdentityDirectory({9: server_ids[1].public_key()}), global_state={}
    )
    with pytest.raises(SecAggAbort, match="not in the identity directory"):
        victim.share_keys({**genuine, 9: sybil.advertise_keys()}, t)
    # (vi) a signature made with the right key but over other public keys (the server swaps in its own mask key)
    mixed = AdvertisedKeys(genuine[1].c_pk, forged[1].s_pk, genuine[1].signature, genuine[1].state_digest)
    with pytest.raises(SecAggAbort, match="not signed"):
        victim.share_keys({**genuine, 1: mixed}, t)

    # nothing left the victim; with the genuine broadcast the same client completes the round and the sum is exact
    assert victim.state.last_round is None and not victim._b_shares
    cts = {u: c.share_keys(genuine, t) for u, c in {0: victim, **honest}.items()}
    everyone = {0: victim, **honest}
    ups = {u: _update(u) for u in ids}
    masked = {u: everyone[u].masked_input(ups[u], 1.0, {s: c[u] for s, c in cts.items() if u in c}) for u in ids}
    sigs = {u: everyone[u].sign_survivors(ids) for u in ids}
    shares = {u: everyone[u].unmask(ids, sigs) for u in ids[:t]}
    total = torch.remainder(sum(_vec(masked[u]) for u in ids), MODULUS)
    for u in ids:
        total = torch.remainder(
            total - prg_residues(shamir_combine({_point(r): shares[r][u][1] for r in shares}), 64), MODULUS
        )
    torch.testing.assert_close(decode(total), sum(_vec(ups[u]).double() for u in ids), atol=5 * 2**-25, rtol=0)


def test_an_identity_directory_is_required_and_must_match():
    with pytest.raises(ValueError, match="needs `identity`"):
        SecAggClient(0, 1)  # no unauthenticated mode: it would be open to key substitution
    identities, directory = IdentityDirectory.provision([0, 1])
    with pytest.raises(ValueError, match="not the key the directory holds for client 0"):
        SecAggClient(0, 1, identity=identities[1], directory=directory, global_state={})
    with pytest.raises(TypeError, match="Ed25519PrivateKey"):
        SecAggClient(0, 1, identity=identities[0].public_key(), directory=directory, global_state={})
    restored = IdentityDirectory.from_json(directory.to_json())  # how it is distributed to clients
    assert restored.client_ids == [0, 1] and restored.public_bytes(1) == directory.public_bytes(1)
    with pytest.raises(ValueError, match="identity directory JSON"):
        IdentityDirectory.from_json('{"0": "zz"}')
    with pytest.raises(ValueError, match="share one identity key"):
        IdentityDirectory({0: directory.public_bytes(0), 1: directory.public_bytes(0)})
    with pytest.raises(ValueError, match="both `identities` and `directory`"):
        secure_aggregate({0: _update(0), 1: _update(1)}, {0: 1.0, 1: 1.0}, directory=directory)


# ------------------------------------------------------------------------------------ 2. false dropout with colluders


def _split_view_attack(n, colluders, lied_to, threshold, max_colluders, rnd=1):
    """The server tells `lied_to` that client 0 dropped and everyone else that it survived; colluders hand over
    both of their shares of 0. Returns (#self-mask shares, #mask-key shares, max error if 0 was unmasked)."""
    ids = list(range(n))
    identities, directory = IdentityDirectory.provision(ids)
    cl = {
        u: SecAggClient(
            u, rnd, identity=identities[u], directory=directory, max_colluders=max_colluders, global_state={}
        )
        for u in ids
    }
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    cts = {u: c.share_keys(keys, threshold) for u, c in cl.items()}
    ups = {u: _update(100 + u) for u in ids}
    y = {u: _vec(cl[u].masked_input(ups[u], 1.0, {s: c[u] for s, c in cts.items() if u in c})) for u in ids}
    alive, dead = ids, [w for w in ids if w != 0]  # the two survivor lists the server shows
    sigs = {tuple(alive): {}, tuple(dead): {}}
    for c in colluders:  # colluders sign both lists and hand over both of their shares of 0
        for lst in (alive, dead):
            sigs[tuple(lst)][c] = identities[c].sign(_survivors_message(rnd, lst))
    shown = {u: (dead if u in lied_to else alive) for u in ids if u not in colluders}
    for u, lst in shown.items():
        try:
            sigs[tuple(lst)][u] = cl[u].sign_survivors(lst)
        except SecAggAbort as err:  # e.g. too few survivors for the threshold: this client signs nothing
            assert "below the threshold" in str(err)
    b_sh, s_sh = {}, {}
    for c in colluders:
        b_sh[_point(c)], s_sh[_point(c)] = cl[c]._b_shares[0], cl[c]._s_shares[0]
    for u, lst in shown.items():
        if u not in sigs[tuple(lst)]:
            continue
        try:
            kind, share = cl[u].unmask(lst, sigs[tuple(lst)])[0]
        except SecAggAbort as err:  # fewer than t clients signed the list this client was shown
            assert "clients signed the survivor list" in str(err)
            continue
        (b_sh if kind == "b" else s_sh)[_point(u)] = share
    err = None
    if len(b_sh) >= threshold and len(s_sh) >= threshold:
        rec = _unmask_one(
            0,
            y[0],
            shamir_combine(b_sh),
            _private_from_bytes(shamir_combine(s_sh)),
            {v: keys[v].s_pk for v in ids if v != 0},
            rnd,
        )
        err = float((rec - _vec(ups[0]).double()).abs().max())
    return len(b_sh), len(s_sh), err


@pytest.mark.parametrize("n,colluders", [(3, [2]), (5, [4]), (5, [3, 4])])
def test_false_dropout_with_colluders_is_refused_or_starved(n, colluders):
    c = len(colluders)
    honest_others = [u for u in range(1, n) if u not in colluders]
    # control: with the honest-majority threshold (2t <= n + c) the review's attack unmasks client 0
    t_weak = n // 2 + 1
    best = max(
        (
            _split_view_attack(n, colluders, lied, t_weak, 0)
            for k in range(1, len(honest_others) + 1)
            for lied in itertools.combinations(honest_others, k)
        ),
        key=lambda r: min(r[0], r[1]),
    )
    assert best[2] is not None and best[2] < 1e-7
    # clients that allow for c colluders refuse that threshold before sharing anything
    with pytest.raises(SecAggAbort, match=f"threshold={t_weak} with {n} clients and max_colluders={c}"):
        _split_view_attack(n, colluders, [], t_weak, c)
    # with the default threshold for c colluders no split of the honest clients gives the server t shares of both
    t = default_threshold(n, c)
    assert 2 * t > n + c
    for k in range(0, len(honest_others) + 1):
        for lied in itertools.combinations(honest_others, k):
            b, s, err = _split_view_attack(n, colluders, lied, t, c)
            assert min(b, s) < t and err is None


def test_colluder_bound_in_the_federated_arguments_and_honest_rounds():
    assert FederatedArguments(secure_aggregation=True, secure_aggregation_max_colluders=1).threshold(5) == 4
    assert FederatedArguments(secure_aggregation=True).threshold(5) == 3
    with pytest.raises(ValueError, match="--secure_aggregation_max_colluders 1 must be > 3.0"):
        FederatedArguments(secure_aggregation_threshold=3, secure_aggregation_max_colluders=1).threshold(5)
    with pytest.raises(ValueError, match="--secure_aggregation_max_colluders 5 is too large for 5 clients"):
        FederatedArguments(secure_aggregation_max_colluders=5).threshold(5)
    with pytest.raises(ValueError, match="--secure_aggregation_max_colluders must be an integer >= 0"):
        FederatedArguments(secure_aggregation_max_colluders=-1)
    # the honest protocol with c = 1 (t = 4 of 5): exact, survives one dropout, aborts below the threshold
    ups = {u: _update(u, 500) for u in range(5)}
    w = {u: float(u + 1) for u in range(5)}
    mean, total, view = secure_aggregate(ups, w, max_colluders=1, drop_before_upload=[2])
    assert view.threshold == 4
    ref = sum(w[u] * _vec(ups[u]).double() for u in (0, 1, 3, 4)) / total
    assert float((_vec(mean) - ref).abs().max()) <= quantization_error_bound(5, total) + 1e-12
    with pytest.raises(ValueError, match="below the threshold 4"):
        secure_aggregate(ups, w, max_colluders=1, drop_before_upload=[2], drop_before_unmask=[3])


def _withheld_shares_attack(n, t, masking_peers, shown, rnd=1):
    """No colluder. The server withholds from client 0 the shares of every peer outside `masking_peers` (so 0 masks
    its upload with those peers only), then shows each client `u` its own survivor list `shown[u]`, so that the peers
    0 masked with look dropped to enough other clients. Returns the max error of 0's recovered update, or None."""
    ids = list(range(n))
    identities, directory = IdentityDirectory.provision(ids)
    cl = {u: SecAggClient(u, rnd, identity=identities[u], directory=directory, global_state={}) for u in ids}
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    cts = {u: c.share_keys(keys, t) for u, c in cl.items()}
    ups = {u: _update(200 + u) for u in ids}
    y = {}
    for u in ids:
        routed = {src: c[u] for src, c in cts.items() if u in c and (u != 0 or src in masking_peers)}
        y[u] = _vec(cl[u].masked_input(ups[u], 1.0, routed))
    sigs: dict[tuple, dict] = {}
    for u, lst in shown.items():
        try:
            sigs.setdefault(tuple(sorted(lst)), {})[u] = cl[u].sign_survivors(lst)
        except SecAggAbort:
            pass
    b, s = {}, {}
    for u, lst in shown.items():
        got = sigs.get(tuple(sorted(lst)), {})
        if u not in got:
            continue
        try:
            reply = cl[u].unmask(lst, got)
        except SecAggAbort:
            continue
        for owner, (kind, share) in reply.items():
            (b if kind == "b" else s).setdefault(owner, {})[_point(u)] = share
    if len(b.get(0, {})) < t or any(len(s.get(v, {})) < t for v in masking_peers):
        return None
    z = torch.remainder(y[0] - prg_residues(shamir_combine(b[0]), y[0].numel()), MODULUS)
    for v in masking_peers:
        sk = _private_from_bytes(shamir_combine(s[v]))
        z = torch.remainder(z - prg_residues(_agree(sk, keys[0].s_pk, _pair_info(0, v, rnd)), z.numel()), MODULUS)
    return float((decode(z) - _vec(ups[0]).double()).abs().max())


def test_withheld_shares_and_per_client_dropout_lists_are_refused():
    """Attack found while closing the review's gaps (no colluder needed; it unmasked client 0 on the protocol
    without the signed consistency check, at n = 3, t = 2 and n = 5, t = 3): shrink the set of peers the victim masks
    with, then tell the other clients that exactly those peers dropped. Refused now: a client signs only survivor
    lists made of clients it masked with, and unmasks only a list that t clients signed."""
    # n = 3: client 0 masks with 1 only and is told that 2 survived and 1 dropped, as is client 2
    assert _withheld_shares_attack(3, 2, [1], {0: [0, 2], 2: [0, 2]}) is None
    # n = 5: client 0 masks with 1 and 2; every client sees a list of t = 3 that makes 1 or 2 look dropped
    shown = {0: [0, 1, 2], 1: [0, 1, 3], 2: [0, 2, 3], 3: [0, 3, 4], 4: [0, 3, 4]}
    assert _withheld_shares_attack(5, 3, [1, 2], shown) is None


# ----------------------------------------------------------------------------------------------------- 3. differencing


def test_rerunning_a_served_round_on_another_subset_is_refused():
    ups = {u: _update(u, 16) for u in range(4)}
    w = {0: 30.0, 1: 10.0, 2: 20.0, 3: 40.0}
    sub = (1, 2, 3)
    # control (the review's attack): clients that remember nothing let the server difference two runs of round 7
    m1, t1, _ = secure_aggregate(ups, w, round_index=7)
    m2, t2, _ = secure_aggregate({u: ups[u] for u in sub}, {u: w[u] for u in sub}, round_index=7)
    assert float(((m1["a"] * t1 - m2["a"] * t2) / w[0] - ups[0]["a"].double()).abs().max()) < 1e-6
    # clients with their persistent state: the re-run (or an older round id) is refused
    states = {u: SecAggClientState() for u in range(4)}
    secure_aggregate(ups, w, round_index=7, client_states=states)
    assert all(s.last_round == 7 for s in states.values())
    for rnd in (7, 6):
        with pytest.raises(SecAggAbort, match=f"already served round 7; refusing round {rnd}"):
            secure_aggregate({u: ups[u] for u in sub}, {u: w[u] for u in sub}, round_index=rnd, client_states=states)
    mean, _, _ = secure_aggregate(ups, w, round_index=8, client_states=states)  # the next round is fine
    ref = sum(w[u] * ups[u]["a"].double() for u in range(4)) / sum(w.values())
    assert float((mean["a"] - ref).abs().max()) <= quantization_error_bound(4, sum(w.values())) + 1e-12
    assert SecAggClientState.from_dict(states[0].to_dict()) == states[0]
    # two concurrent sessions of one client for the same round: only the first may share keys
    identities, directory = IdentityDirectory.provision([0, 1])
    st = SecAggClientState()
    a, b = (
        SecAggClient(0, 9, identity=identities[0], directory=directory, state=st, global_state={}) for _ in range(2)
    )
    peer = SecAggClient(1, 9, identity=identities[1], directory=directory, global_state={})
    a.share_keys({0: a.advertise_keys(), 1: peer.advertise_keys()}, 2)
    with pytest.raises(SecAggAbort, match="already served round 9"):
        b.share_keys({0: b.advertise_keys(), 1: peer.advertise_keys()}, 2)


# --------------------------------------------------------------------------------------------- Flower (flwr 1.42) path


def _guard_message(stage, round_id, **configs):
    from flwr.app import ConfigRecord, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    record = ConfigRecord({Key.STAGE: stage, **configs})
    meta = SimpleNamespace(message_type=MessageType.TRAIN, dst_node_id=1, group_id=str(round_id))
    return SimpleNamespace(metadata=meta, content=RecordDict({RECORD_KEY_CONFIGS: record}))


def test_flower_round_guard_enforces_colluder_bound_and_round_order():
    from flwr.app import Context, RecordDict
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

    from hf_ext.federated.flower import make_secagg_round_guard_mod, secagg_setup_parameters

    params = secagg_setup_parameters(FederatedArguments(secure_aggregation=True))

    def ctx(**node_config):
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})

    def setup(rnd, shares, t):
        return _guard_message(
            Stage.SETUP, rnd, **{Key.SAMPLE_NUMBER: shares, Key.SHARE_NUMBER: shares, Key.THRESHOLD: t, **params}
        )

    passed = []
    nxt = lambda m, c: passed.append(m)  # noqa: E731
    guard0 = make_secagg_round_guard_mod(0, setup_parameters=params)
    guard1 = make_secagg_round_guard_mod(1, setup_parameters=params)
    guard0(setup(1, 3, 2), ctx(), nxt)  # honest majority, no colluders
    with pytest.raises(ValueError, match="threshold=2 with 3 clients and max_colluders=1"):
        guard1(setup(1, 3, 2), ctx(), nxt)
    with pytest.raises(ValueError, match="max_colluders=1"):  # the node operator's own bound (node config)
        guard0(setup(1, 3, 2), ctx(**{"secagg-max-colluders": 1}), nxt)
    c = ctx()
    guard1(setup(3, 3, 3), c, nxt)  # t = 3 = default_threshold(3, 1): accepted, round 3 recorded
    guard1(_guard_message(Stage.SHARE_KEYS, 3), c, nxt)
    with pytest.raises(ValueError, match="this node set up round 3"):
        guard1(_guard_message(Stage.SHARE_KEYS, 4), c, nxt)
    for rnd in (3, 2):
        with pytest.raises(ValueError, match=f"round {rnd}, but this node already served round 3"):
            guard1(setup(rnd, 3, 3), c, nxt)
    guard1(setup(4, 3, 3), c, nxt)
    with pytest.raises(ValueError, match="no round id"):
        guard0(_guard_message(Stage.SETUP, "", **{Key.SHARE_NUMBER: 3, Key.THRESHOLD: 2}), ctx(), nxt)
    assert len(passed) == 4


def test_flower_rerun_of_a_served_round_is_refused_by_the_real_client_mods():
    """The differencing attack on Flower's SecAgg+ through our ClientApp mods: the server runs round 1 with nodes
    {1, 2, 3}, then runs round 1 again with {2, 3} and subtracts the two aggregates. Without the round guard (control)
    that recovers node 1's update; with it nodes 2 and 3 refuse the second setup and no second sum exists."""
    from flwr.app import Context, RecordDict
    from flwr.client import ClientApp, NumPyClient

    from hf_ext.federated import make_server_app
    from hf_ext.federated.flower import initial_global_state, secagg_client_mods, secagg_unmask_guard_mod

    from .conftest import tiny_llama
    from .flower_harness import InProcessGrid

    fed = FederatedArguments(num_rounds=1, local_steps=1, lora_r=2, secure_aggregation=True, secagg_max_weight=10.0)

    def model_fn():
        return tiny_llama(64, hidden=16)

    keys = sorted(initial_global_state(model_fn, fed, 0))
    shapes = {k: tuple(v.shape) for k, v in initial_global_state(model_fn, fed, 0).items()}

    def update_of(pid):
        rng = np.random.default_rng(pid)
        return [rng.normal(0, 0.05, shapes[k]).astype(np.float32) for k in keys]

    class FixedClient(NumPyClient):  # a client whose "training" returns a fixed update (the attack needs no model)
        def __init__(self, pid):
            self.pid = pid

        def fit(self, parameters, config):
            return update_of(self.pid), 10, {"train_loss": 0.0}

    def run(mods, grid_nodes=None, grid=None):
        app = ClientApp(client_fn=lambda c: FixedClient(int(c.node_config["partition-id"])).to_client(), mods=mods)
        grid = grid or InProcessGrid(app, 3, errors_as_replies=True)
        grid.client_app = app
        if grid_nodes is not None:
            grid.node_ids = grid_nodes
        out = {}
        server = make_server_app(model_fn, fed, len(grid.node_ids), on_finish=lambda s, r: out.update(s))
        server(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        return grid, out

    from flwr.client.mod import secaggplus_mod

    start = initial_global_state(model_fn, fed, 0)
    true_x1 = np.concatenate([a.ravel() for a in update_of(0)])

    def difference(s1, s2):  # 3 * mean{1,2,3} - 2 * mean{2,3} = x_1
        d1 = np.concatenate([(s1[k] - start[k]).numpy().ravel() for k in keys])
        d2 = np.concatenate([(s2[k] - start[k]).numpy().ravel() for k in keys])
        return 3 * d1 - 2 * d2

    # control: the mods before the round guard (flwr's own + the unmask guard): the re-run is served and leaks x_1
    grid, s1 = run([secagg_unmask_guard_mod, secaggplus_mod])
    _, s2 = run([secagg_unmask_guard_mod, secaggplus_mod], grid_nodes=[2, 3], grid=grid)
    assert float(np.abs(difference(s1, s2) - true_x1).max()) < 1e-4
    # our client mods: the first run is honest and exact, the re-run is refused by both nodes
    grid, s1 = run(secagg_client_mods(fed))
    mean3 = np.mean([np.concatenate([a.ravel() for a in update_of(p)]) for p in range(3)], axis=0)
    got = np.concatenate([(s1[k] - start[k]).numpy().ravel() for k in keys])
    assert float(np.abs(got - mean3).max()) < 2e-5 and not grid.client_errors
    _, s2 = run(secagg_client_mods(fed), grid_nodes=[2, 3], grid=grid)
    assert sorted(n for n, e in grid.client_errors if "already served round 1" in e) == [2, 3]
    assert all(torch.equal(s2[k], start[k]) for k in keys)  # no second aggregate: nothing to subtract


def test_flower_per_node_dead_lists_unmask_a_node_unless_dropouts_are_refused():
    """The withheld-shares attack on flwr 1.42's SecAgg+ client (its own stage functions, behind hf_ext's unmask
    guard), 5 nodes, t = 3, no colluder: Flower has no consistency round, so each per-node request passes the guard
    and node 1's update is recovered. Nodes started with `secagg-refuse-dropouts=true` reveal no mask-key share."""
    import importlib

    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    from hf_ext.federated.flower import secagg_unmask_guard_mod

    M = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    rng_, q, mod_range = 8.0, 2**22, 2**32
    nids, t, victim, masking = [1, 2, 3, 4, 5], 3, 1, [2, 3]
    rng = np.random.default_rng(0)
    xs = {n: [rng.normal(0, 0.05, 16)] for n in nids}

    def run(refuse_dropouts):
        st = {n: M.SecAggPlusState(nid=n) for n in nids}
        setup = {Key.SAMPLE_NUMBER: 5, Key.SHARE_NUMBER: 5, Key.THRESHOLD: t, Key.CLIPPING_RANGE: rng_}
        setup.update({Key.TARGET_RANGE: q, Key.MOD_RANGE: mod_range, Key.MAX_WEIGHT: 100.0})
        pk = {n: M._setup(st[n], ConfigRecord(setup)) for n in nids}
        bc = ConfigRecord({str(n): [pk[n][Key.PUBLIC_KEY_1], pk[n][Key.PUBLIC_KEY_2]] for n in nids})
        sh = {n: M._share_keys(st[n], bc) for n in nids}
        masked = {}
        for n in nids:  # the server withholds from node 1 the shares of nodes 4 and 5
            pairs = [
                (src, c)
                for src in nids
                if n != victim or src in masking
                for d, c in zip(sh[src][Key.DESTINATION_LIST], sh[src][Key.CIPHERTEXT_LIST])
                if d == n
            ]
            cfg = ConfigRecord({Key.CIPHERTEXT_LIST: [c for _, c in pairs], Key.SOURCE_LIST: [s for s, _ in pairs]})
            out = M._collect_masked_vectors(st[n], cfg, 100, ndarrays_to_parameters(xs[n]))
            masked[n] = [bytes_to_ndarray(b) for b in out[Key.MASKED_PARAMETERS]]
        # per-node (active, dead) lists: node 1 sees 2 and 3 alive, the others see 2 or 3 (or both) dead
        req = {1: ([1, 2, 3], []), 2: ([1, 2, 4], [3]), 3: ([1, 3, 4], [2]), 4: ([1, 4, 5], [2, 3])}
        req[5] = req[4]
        b, s = {}, {}
        for n, (act, dead) in req.items():
            cfg = ConfigRecord({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: act, Key.DEAD_NODE_ID_LIST: dead})
            meta = SimpleNamespace(message_type=MessageType.TRAIN, dst_node_id=n, group_id="1")
            msg = SimpleNamespace(metadata=meta, content=RecordDict({RECORD_KEY_CONFIGS: cfg}))
            ctx = Context(1, n, {"secagg-refuse-dropouts": refuse_dropouts}, RecordDict(), {})
            try:
                r = secagg_unmask_guard_mod(
                    msg, ctx, lambda m, c, n=n: M._unmask(st[n], m.content[RECORD_KEY_CONFIGS])
                )
            except ValueError as err:
                assert "secagg-refuse-dropouts=true" in str(err)
                continue
            for i, (owner, share) in enumerate(zip(r[Key.NODE_ID_LIST], r[Key.SHARE_LIST])):
                (b if i < len(act) else s).setdefault(owner, []).append(share)
        if len(b.get(victim, [])) < t or any(len(s.get(v, [])) < t for v in masking):
            return None
        shapes = [a.shape for a in masked[victim]]
        y = [
            (a.astype(np.int64) - m) % mod_range
            for a, m in zip(masked[victim], pseudo_rand_gen(combine_shares(b[victim][:t]), mod_range, shapes))
        ]
        for v in masking:
            sk = bytes_to_private_key(combine_shares(s[v][:t]))
            m = pseudo_rand_gen(
                generate_shared_key(sk, bytes_to_public_key(pk[victim][Key.PUBLIC_KEY_1])), mod_range, shapes
            )
            y = [(a + mm) % mod_range for a, mm in zip(y, m)]  # node 1 < v subtracted the mask
        rec = dequantize([y[1]], rng_, q)[0] * q / int(np.asarray(y[0]).reshape(-1)[0])
        return float(np.abs(rec - xs[victim][0]).max())

    err = run(False)
    assert err is not None and err < 1e-5  # the attack works on Flower's SecAgg+ with the default guard
    assert run(True) is None
