"""Secure aggregation, tested as an attacker controlling the server: the server's view of a round reveals no single
client's update, the sum is exact, dropouts below the threshold are survived, and clients refuse requests that would
unmask an upload."""

import dataclasses

import pytest
import torch

from hf_ext.federated import (
    FederatedArguments,
    IdentityDirectory,
    SecAggAbort,
    SecAggClient,
    decode,
    fedavg,
    prg_residues,
    quantization_error_bound,
    secure_aggregate,
    shamir_combine,
    shamir_split,
    unmask_sum,
)
from hf_ext.federated.secure_aggregation import MODULUS, _flatten, _point


def _updates(ids, size=4000, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {u: {"a": torch.randn(size, generator=g) * 0.05, "b": torch.randn(3, 4, generator=g)} for u in ids}


def _mean64(ups, weights, ids):
    total = sum(weights[u] for u in ids)
    return {k: sum(weights[u] * ups[u][k].double() for u in ids) / total for k in ups[ids[0]]}


def _corr(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x.double().flatten(), y.double().flatten()]))[0, 1])


def _chance(n: int) -> float:
    """|correlation| of n independent pairs stays below this at chance (5 standard errors: p ~ 6e-7 per check); the
    masks come from fresh key agreements, so a fixed threshold like 0.05 (3.2 standard errors at n=4000) fails
    about once in 200 runs of a test with eight checks."""
    return 5 / n**0.5


def _strip_self_mask(view, u):
    """What the server can do with the shares it legitimately holds: rebuild u's self-mask seed and remove it."""
    shares = {_point(r): s[u][1] for r, s in view.unmask_shares.items() if u in s and s[u][0] == "b"}
    keys, _, numel = _flatten(view.masked[u])
    y = torch.cat([view.masked[u][k].reshape(-1) for k in keys])
    return torch.remainder(y - prg_residues(shamir_combine(shares), numel), MODULUS)


def test_sum_is_exact_and_no_single_upload_is_revealed():
    ids = [3, 7, 11, 12]
    ups = _updates(ids)
    weights = {3: 5.0, 7: 1.0, 11: 2.0, 12: 8.0}
    mean, total, view = secure_aggregate(ups, weights, round_index=2)
    ref = _mean64(ups, weights, ids)
    torch.testing.assert_close(fedavg([ups[u] for u in ids], [weights[u] for u in ids])["a"].double(), ref["a"])
    bound = quantization_error_bound(len(ids), total)
    for k in ref:
        assert (mean[k] - ref[k]).abs().max() <= bound + 1e-12
    # everything the server received: public keys, encrypted shares, masked uploads, unmask shares
    for u in ids:
        y = view.masked[u]["a"]
        assert abs(_corr(decode(y), ups[u]["a"])) < _chance(ups[u]["a"].numel())  # the upload alone looks uniform
        assert float(y.double().mean()) / MODULUS == pytest.approx(0.5, abs=0.025)  # 5.5 s.e. at n=4000
        # even after removing u's self mask (whose shares it does get) the pairwise masks still hide x_u
        residual = decode(_strip_self_mask(view, u))[: ups[u]["a"].numel()] / weights[u]  # "a" sorts first
        assert abs(_corr(residual, ups[u]["a"])) < _chance(ups[u]["a"].numel())
        assert float((residual - ups[u]["a"]).abs().median()) > 1e6
    # the encrypted shares carry no share in clear
    some_share = next(iter(view.unmask_shares.values()))
    for cts in view.ciphertexts.values():
        for ct in cts.values():
            for _, share in some_share.values():
                assert share.to_bytes(66, "big") not in ct


def test_no_default_secret_and_fresh_keys_every_round():
    names = {f.name for f in dataclasses.fields(FederatedArguments)}
    assert not any("secret" in n for n in names)  # nothing the server could be given to derive masks
    ups = _updates([0, 1], size=10)
    _, _, v1 = secure_aggregate(ups, {0: 1.0, 1: 1.0})
    _, _, v2 = secure_aggregate(ups, {0: 1.0, 1: 1.0})
    assert v1.public_keys[0] != v2.public_keys[0]
    assert not torch.equal(v1.masked[0]["a"], v2.masked[0]["a"])


def test_prg_is_cryptographic_every_seed_bit_matters():
    seed = bytes(range(32))
    base = prg_residues(seed, 4096)
    for i in (0, 3, 4, 16, 31):  # the old masks used torch's Mersenne Twister, which keeps only 32 seed bits
        flipped = bytearray(seed)
        flipped[i] ^= 1
        other = prg_residues(bytes(flipped), 4096)
        assert float((other == base).double().mean()) < 0.01
    assert float(base.double().mean()) / MODULUS == pytest.approx(0.5, abs=0.03)
    assert int(base.min()) >= 0 and int(base.max()) < MODULUS


def test_shamir_threshold():
    secret = bytes(range(1, 33))
    shares = shamir_split(secret, 3, [1, 2, 3, 4, 5])
    assert shamir_combine({x: shares[x] for x in (1, 3, 5)}) == secret
    assert shamir_combine({x: shares[x] for x in (2, 4, 5)}) == secret
    with pytest.raises(ValueError):  # two shares: a random field element, not the secret
        assert shamir_combine({x: shares[x] for x in (1, 2)}) != secret


@pytest.mark.parametrize("stage", ["upload", "unmask"])
def test_dropouts_below_the_threshold_are_survived(stage):
    ids = [0, 1, 2, 3, 4]
    ups = _updates(ids, size=500)
    weights = {u: float(u + 1) for u in ids}
    kwargs = {"drop_before_upload": [1, 3]} if stage == "upload" else {"drop_before_unmask": [1, 3]}
    mean, total, _ = secure_aggregate(ups, weights, **kwargs)  # t = 3 of 5
    uploaders = [0, 2, 4] if stage == "upload" else ids
    ref = _mean64(ups, weights, uploaders)
    for k in ref:
        assert (mean[k] - ref[k]).abs().max() <= quantization_error_bound(5, total) + 1e-12
    with pytest.raises(ValueError, match="below the threshold"):
        secure_aggregate(ups, weights, drop_before_upload=[0, 1, 2])


def _clients(ids, round_index=0, directory_ids=None, **kwargs):
    """Honest clients with identities provisioned out of band (the directory may list more clients than `ids`)."""
    identities, directory = IdentityDirectory.provision(directory_ids or ids)
    clients = {
        u: SecAggClient(u, round_index, identity=identities[u], directory=directory, global_state={}, **kwargs)
        for u in ids
    }
    return clients, identities, directory


def _run_to_upload(ids, round_index=0):
    ups = _updates(ids, size=2000)
    clients, _, _ = _clients(ids, round_index)
    keys = {u: c.advertise_keys() for u, c in clients.items()}
    t = len(ids) // 2 + 1
    cts = {u: c.share_keys(keys, t) for u, c in clients.items()}
    masked = {u: clients[u].masked_input(ups[u], 1.0, {s: c[u] for s, c in cts.items() if u in c}) for u in ids}
    return ups, clients, keys, cts, masked


def _sign(clients, survivors, signers):
    return {u: clients[u].sign_survivors(survivors) for u in signers}


def test_server_that_falsely_declares_an_uploader_dropped_cannot_unmask_it():
    ids = [0, 1, 2]
    ups, clients, keys, cts, masked = _run_to_upload(ids)
    # client 0 uploaded; the server lies to 1 and 2 that it dropped, and gets 0's mask key (s_sk) shares
    sigs = _sign(clients, [1, 2], (1, 2))
    shares = {u: clients[u].unmask([1, 2], sigs) for u in (1, 2)}
    s_shares = {_point(u): s[0][1] for u, s in shares.items()}
    assert all(s[0][0] == "s" for s in shares.values())
    from hf_ext.federated.secure_aggregation import _agree, _pair_info, _private_from_bytes

    s_sk0 = _private_from_bytes(shamir_combine(s_shares))
    y0 = torch.cat([masked[0][k].reshape(-1) for k in sorted(masked[0])])
    for v in (1, 2):  # remove every pairwise mask of client 0
        m = prg_residues(_agree(s_sk0, keys[v][1], _pair_info(0, v, 0)), y0.numel())
        y0 = torch.remainder(y0 - m, MODULUS)
    leaked = decode(y0)[: ups[0]["a"].numel()]
    assert abs(_corr(leaked, ups[0]["a"])) < _chance(leaked.numel())  # the self mask still hides the update
    assert float((leaked - ups[0]["a"]).abs().median()) > 1e6
    # and the clients will not also sign another list or hand out the self-mask shares of client 0 in this round
    for u in (1, 2):
        with pytest.raises(RuntimeError, match="again"):
            clients[u].sign_survivors([0, 1, 2])
        with pytest.raises(RuntimeError, match="again"):
            clients[u].unmask([0, 1, 2], sigs)
    with pytest.raises(SecAggAbort, match="dropped"):  # client 0 itself refuses to be declared dropped
        clients[0].sign_survivors([1, 2])


def test_clients_refuse_inconsistent_or_too_small_unmask_requests():
    ids = [0, 1, 2, 3, 4]
    _, clients, keys, _, _ = _run_to_upload(ids)
    with pytest.raises(SecAggAbort, match="below the threshold"):
        clients[1].sign_survivors([0, 1])
    with pytest.raises(SecAggAbort, match="repeats"):
        clients[1].sign_survivors([0, 1, 1, 2])
    with pytest.raises(RuntimeError, match="before the consistency check"):
        clients[1].unmask(ids, {})
    # a split view (0 alive for some, dead for others): neither list gathers t = 3 signatures, nobody unmasks
    alive = _sign(clients, ids, (0, 1))
    dead = _sign(clients, [1, 2, 3, 4], (2, 3))
    with pytest.raises(SecAggAbort, match="only 2 clients signed"):
        clients[0].unmask(ids, alive)
    with pytest.raises(SecAggAbort, match="does not cover this survivor list"):  # signatures of the other list
        clients[2].unmask([1, 2, 3, 4], {**dead, 1: alive[1]})
    with pytest.raises(SecAggAbort, match="we signed"):  # a list other than the one the client signed
        clients[3].unmask(ids, alive)
    with pytest.raises(SecAggAbort, match="non-survivor 0"):
        clients[3].unmask([1, 2, 3, 4], {**dead, 0: alive[0]})
    fresh, _, _ = _clients([0, 1, 2, 3, 4, 5])
    fresh_keys = {u: c.advertise_keys() for u, c in fresh.items()}
    with pytest.raises(SecAggAbort, match="threshold=2 with 6 clients and max_colluders=0"):
        fresh[0].share_keys(fresh_keys, 2)  # 6 clients: t = 2 is not a majority


def test_server_cannot_finish_without_enough_unmask_shares():
    ids = [0, 1, 2]
    ups, clients, keys, cts, masked = _run_to_upload(ids)
    from hf_ext.federated import ServerView

    view = ServerView(threshold=2, public_keys=keys, ciphertexts=cts, masked=masked)
    sigs = _sign(clients, ids, ids)
    view.unmask_shares = {0: clients[0].unmask(ids, sigs)}  # one responder, threshold 2
    with pytest.raises(ValueError, match="need 2"):
        unmask_sum(view, ids)
    view.unmask_shares[1] = clients[1].unmask(ids, sigs)
    total = unmask_sum(view, ids)
    torch.testing.assert_close(decode(total["a"]), sum(ups[u]["a"].double() for u in ids), atol=1e-6, rtol=0)


def test_sum_of_large_updates_cannot_wrap_around_the_modulus():
    """Review finding: each update was bounded by 2**60 while the masked sum decodes within +-2**61, so three clients
    near the per-client bound wrapped silently (the secure mean came back with the wrong sign). Now each client is
    bounded by 2**61 / n and the round refuses instead of returning a wrong sum."""
    big = 6.18e10  # 6.18e10 * 2**24 ~ 1.04e18: under 2**60, but three of them exceed 2**61
    ups = {u: {"w": torch.full((4,), big)} for u in range(3)}
    with pytest.raises(ValueError, match="2\\*\\*61"):
        secure_aggregate(ups, {u: 1.0 for u in ups})
    fine = {u: {"w": torch.full((4,), big / 2)} for u in range(3)}  # sum below 2**61: exact
    mean, _, _ = secure_aggregate(fine, {u: 1.0 for u in fine})
    torch.testing.assert_close(mean["w"], torch.full((4,), big / 2, dtype=torch.float64), rtol=1e-6, atol=0)


def test_flower_range_check_refuses_non_finite_updates():
    """Review finding: NaN slipped through `check_secagg_range` (NaN > range is False) and quantized to garbage."""
    from hf_ext.federated import FederatedArguments
    from hf_ext.federated.flower import check_secagg_range

    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    check_secagg_range({"w": torch.zeros(3)}, 1, fed)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not finite"):
            check_secagg_range({"w": torch.tensor([0.0, bad])}, 1, fed)


def test_a_flower_clients_refusal_text_tells_the_server_nothing_about_its_update(caplog):
    """Audit finding (pass 12): a SuperNode sends a ClientApp's exception text to the server, and the range and
    precision refusals printed the update's largest entry and its relative rounding error (a function of its L2
    norm); a server choosing `secagg-clipping-range=1e-6` or a `secagg-max-weight` that leaves the rounding error
    finite but too large (3e6 for 10 examples) read every client's norm. Two updates of different sizes, refused for
    the same reason, now give the same text; the numbers stay in the node's log (a warning)."""
    import logging
    import math

    from hf_ext.federated.flower import check_secagg_range, secagg_quantization_error
    from hf_ext.federated.secure_aggregation import SECAGG_MAX_RELATIVE_ERROR

    def refusal(update, fed):
        with pytest.raises(ValueError) as err:
            check_secagg_range(update, 10, fed)
        return str(err.value)

    small, large = {"w": torch.tensor([0.0, 0.3, -0.2])}, {"w": torch.tensor([0.0, 0.7, -0.5])}
    clipping = FederatedArguments(secagg_clipping_range=1e-6, secagg_max_weight=100.0)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        texts = {refusal(small, clipping), refusal(large, clipping)}
    assert len(texts) == 1 and "secagg-clipping-range" in texts.pop()
    assert "0.07" in caplog.text  # 10 / 100 * 0.7: the size is logged on the node
    # audit rv13: at secagg-max-weight=1e9 the weight 10 / 1e9 rounds to 0, the error is inf for every update and the
    # leaking text was the same for both; at 3e6 the errors are finite and differ (2.75, 1.15), so a text that still
    # carried the error would differ
    precision = FederatedArguments(secagg_max_weight=3e6)
    errors = [secagg_quantization_error(u, 10, precision) for u in (small, large)]
    assert all(math.isfinite(e) and e > SECAGG_MAX_RELATIVE_ERROR for e in errors) and errors[0] != errors[1]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flwr"):
        texts = {refusal(small, precision), refusal(large, precision)}
    assert len(texts) == 1 and "secagg-max-weight" in texts.pop()
    assert all(f"{e:.3g}" in caplog.text for e in errors)  # the errors are logged on the node


def test_flower_unmask_guard_refuses_requests_that_reveal_both_secrets():
    """Review finding: flwr 1.42's client mod answers an unmask request listing a node as both active and dead with
    both kinds of shares (the server then unmasks that upload). The guard mod in front of it refuses."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict
    from flwr.app.message_type import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    from hf_ext.federated.flower import check_unmask_request, secagg_unmask_guard_mod

    check_unmask_request({Key.ACTIVE_NODE_ID_LIST: [1, 2, 3], Key.DEAD_NODE_ID_LIST: [4]}, 2)  # honest request
    for active, dead, me in (([1, 2, 3], [3], 2), ([1, 3], [2], 2), ([1, 3], [], 2), ([1, 1, 2], [], 2)):
        with pytest.raises(ValueError, match="refusing"):
            check_unmask_request({Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: dead}, me)

    def message(stage, active, dead):
        configs = ConfigRecord({Key.STAGE: stage, Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: dead})
        meta = SimpleNamespace(message_type=MessageType.TRAIN, dst_node_id=2)
        return SimpleNamespace(metadata=meta, content=RecordDict({RECORD_KEY_CONFIGS: configs}))

    from flwr.app import Context

    ctx = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    passed = []
    secagg_unmask_guard_mod(message(Stage.UNMASK, [1, 2], [3]), ctx, lambda m, c: passed.append(m))
    secagg_unmask_guard_mod(message(Stage.SETUP, [], []), ctx, lambda m, c: passed.append(m))
    assert len(passed) == 2
    with pytest.raises(ValueError, match="both active and dead"):
        secagg_unmask_guard_mod(message(Stage.UNMASK, [1, 2, 3], [3]), ctx, lambda m, c: passed.append(m))
    assert len(passed) == 2
