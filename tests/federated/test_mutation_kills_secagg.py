"""Secure aggregation: input validation of the primitives and the client-side refusals that keep a malicious server
from unmasking one client (replayed signatures, broadcasts without our keys, withheld shares, duplicated signers)."""

import pytest
import torch

from hf_ext.federated import (
    AdvertisedKeys,
    IdentityDirectory,
    SecAggAbort,
    SecAggClient,
    check_colluder_bound,
    decode,
    default_threshold,
    encode,
    quantization_error_bound,
    secure_aggregate,
    shamir_split,
    unmask_sum,
)
from hf_ext.federated.secure_aggregation import MODULUS, _advert_message


def _update(seed, size=32):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(size, generator=g) * 0.05}


def _round(ids, round_index, identities, directory, threshold, **kwargs):
    """Honest clients of one round, run up to their uploads: (clients, advertised keys, ciphertexts)."""
    clients = {
        u: SecAggClient(u, round_index, identity=identities[u], directory=directory, global_state={}, **kwargs)
        for u in ids
    }
    keys = {u: c.advertise_keys() for u, c in clients.items()}
    cts = {u: c.share_keys(keys, threshold) for u, c in clients.items()}
    for u in ids:
        clients[u].masked_input(_update(u), 1.0, {s: c[u] for s, c in cts.items() if u in c})
    return clients, keys, cts


# ----------------------------------------------------------------------------------------------- fixed-point encoding


def test_encode_refuses_nan():
    """A NaN entry cannot be encoded (it would become an arbitrary residue that corrupts the sum silently)."""
    with pytest.raises(ValueError, match="not finite"):
        encode(torch.tensor([0.25, float("nan")]))
    with pytest.raises(ValueError, match="not finite"):
        secure_aggregate({0: {"w": torch.tensor([float("nan")])}, 1: {"w": torch.zeros(1)}}, {0: 1.0, 1: 1.0})


def test_encode_bound_is_strict_so_the_sum_never_reaches_the_sign_bit():
    """Each of n summands must stay strictly below 2**61 / n: n values equal to that limit sum to 2**61, which the
    two's-complement decoding reads as -2**61 (the sum would change sign)."""
    n = 4
    limit = 2.0**61 / n  # 2**59, exact in float64
    assert (n * int(limit)) % MODULUS == 2**61  # the wrapped sum: decodes as negative
    with pytest.raises(ValueError, match="2\\*\\*61"):
        encode(torch.tensor([limit], dtype=torch.float64), frac_bits=0, num_summands=n)
    below = limit - 2.0**8  # the next representable values below the limit are accepted and sum exactly
    enc = encode(torch.tensor([below], dtype=torch.float64), frac_bits=0, num_summands=n)
    total = torch.remainder(enc * n, MODULUS)
    assert float(decode(total, frac_bits=0)[0]) == n * below


def test_quantization_error_bound_is_attained_by_half_step_values():
    """The documented worst case (half a fixed-point step per client) is reached: values at exactly half a step
    round (half to even) down by half a step in every client, so the mean is off by exactly the bound."""
    n, frac_bits = 3, 24
    half_step = 0.5 * 2.0**-frac_bits
    ups = {u: {"w": torch.full((5,), half_step, dtype=torch.float64)} for u in range(n)}
    mean, total, _ = secure_aggregate(ups, {u: 1.0 for u in range(n)}, frac_bits=frac_bits)
    err = float((mean["w"] - half_step).abs().max())
    assert err == pytest.approx(half_step, rel=1e-12)  # every client rounded 0.5 step down: mean error 0.5 step
    assert quantization_error_bound(n, total, frac_bits) == pytest.approx(err, rel=1e-12)


# ---------------------------------------------------------------------------------------------------------- Shamir


def test_shamir_split_refuses_points_and_thresholds_that_reveal_the_secret():
    """A share at x = 0 (or any multiple of the field prime) is the secret itself, a threshold of 0 gives every
    holder the secret, and duplicate points give fewer independent shares than holders: all are refused."""
    secret = bytes(range(32))
    prime = (1 << 521) - 1
    for xs in ([0, 1, 2], [1, prime, 3], [1, 2, 2]):
        with pytest.raises(ValueError, match="distinct and non-zero"):
            shamir_split(secret, 2, xs)
    with pytest.raises(ValueError, match="threshold"):
        shamir_split(secret, 0, [1, 2, 3])
    shares = shamir_split(secret, 1, [1, 2])  # threshold 1 is the documented lower bound
    assert set(shares) == {1, 2}


# ------------------------------------------------------------------------------------------ thresholds and identities


def test_thresholds_need_a_strict_majority_and_at_least_two_holders():
    """`2t > n + c`, `t >= 2` and `t <= n`, checked at each boundary."""
    for t, n, c in ((3, 4, 0), (4, 5, 1), (2, 2, 0), (2, 3, 0)):
        check_colluder_bound(t, n, c)
    for t, n, c in ((2, 4, 0), (3, 5, 1), (1, 1, 0), (4, 3, 0), (3, 2, 0)):
        with pytest.raises(ValueError):
            check_colluder_bound(t, n, c)
    assert [default_threshold(n) for n in (2, 3, 4, 5)] == [2, 2, 3, 3]
    with pytest.raises(ValueError):
        default_threshold(1)  # one client: no threshold >= 2 exists, nothing can be hidden
    for bad in (-1, True):
        with pytest.raises(ValueError, match="max_colluders"):
            default_threshold(5, bad)


def test_a_client_refuses_a_threshold_that_is_not_a_strict_majority_of_the_broadcast():
    """The client itself counts every advertised client (itself included) when checking `2t > n + c`."""
    ids = [0, 1, 2, 3]
    identities, directory = IdentityDirectory.provision(ids)
    c0 = SecAggClient(0, 1, identity=identities[0], directory=directory, global_state={})
    peers = {u: SecAggClient(u, 1, identity=identities[u], directory=directory, global_state={}) for u in ids[1:]}
    keys = {0: c0.advertise_keys(), **{u: c.advertise_keys() for u, c in peers.items()}}
    with pytest.raises(SecAggAbort, match="threshold=2 with 4 clients"):
        c0.share_keys(keys, 2)
    assert c0.state.last_round is None  # nothing left the client


def test_identity_directory_refuses_negative_ids_and_unknown_signers():
    identities, directory = IdentityDirectory.provision([0, 1])
    with pytest.raises(ValueError, match="integers >= 0"):
        IdentityDirectory({-1: directory.public_bytes(0)})
    msg = b"hf_ext test message"
    sig = identities[0].sign(msg)
    assert directory.verify_message(0, msg, sig)
    assert not directory.verify_message(1, msg, sig)  # another client's key
    assert not directory.verify_message(7, msg, sig)  # not in the directory at all


# ------------------------------------------------------------------------------------------------- key broadcast


def test_share_keys_refuses_a_broadcast_without_our_own_keys():
    """A server that leaves the client's own keys out of the broadcast (so the client counts fewer clients and
    keeps no share of its own secrets) is refused before any share leaves."""
    ids = [0, 1, 2, 3]
    identities, directory = IdentityDirectory.provision(ids)
    cl = {u: SecAggClient(u, 2, identity=identities[u], directory=directory, global_state={}) for u in ids}
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    without_us = {u: k for u, k in keys.items() if u != 0}
    with pytest.raises(SecAggAbort, match="own public keys"):
        cl[0].share_keys(without_us, 3)
    assert cl[0].state.last_round is None


def test_share_keys_refuses_a_peer_advertising_another_clients_keys():
    """A (colluding) client that signs another client's public keys as its own is refused: each key may appear once
    in the broadcast."""
    ids, rnd = [0, 1, 2], 3
    identities, directory = IdentityDirectory.provision(ids)
    cl = {u: SecAggClient(u, rnd, identity=identities[u], directory=directory, global_state={}) for u in ids}
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    d = keys[1].state_digest
    copied = AdvertisedKeys(
        keys[1].c_pk, keys[1].s_pk, identities[2].sign(_advert_message(rnd, 2, keys[1].c_pk, keys[1].s_pk, d)), d
    )
    directory.verify(2, rnd, copied)  # a validly signed advertisement of client 2
    with pytest.raises(SecAggAbort, match="repeated public keys"):
        cl[0].share_keys({**keys, 2: copied}, 2)
    assert cl[0].state.last_round is None


# ------------------------------------------------------------------------------------------------- masked upload


def test_masked_input_refuses_too_few_peers_and_integer_updates():
    """A client whose shares were withheld by the server (fewer than t - 1 senders) does not upload; an integer
    update is refused rather than encoded."""
    ids, t = [0, 1, 2, 3, 4], 3
    identities, directory = IdentityDirectory.provision(ids)
    cl = {u: SecAggClient(u, 1, identity=identities[u], directory=directory, global_state={}) for u in ids}
    keys = {u: c.advertise_keys() for u, c in cl.items()}
    cts = {u: c.share_keys(keys, t) for u, c in cl.items()}
    with pytest.raises(ValueError, match="fewer live peers"):
        cl[0].masked_input(_update(0), 1.0, {1: cts[1][0]})  # 1 peer + itself < t = 3
    with pytest.raises(TypeError, match="takes floats"):
        cl[1].masked_input({"a": torch.arange(4)}, 1.0, {s: c[1] for s, c in cts.items() if 1 in c})


# ----------------------------------------------------------------------------------------------------- unmasking


def test_survivor_signatures_from_an_earlier_round_are_not_accepted():
    """Signatures over the same survivor list made in another round cannot be replayed to reach the threshold."""
    ids, t = [0, 1, 2], 2
    identities, directory = IdentityDirectory.provision(ids)
    old, _, _ = _round(ids, 1, identities, directory, t)
    old_sigs = {u: old[u].sign_survivors(ids) for u in ids}
    new, _, _ = _round(ids, 2, identities, directory, t)
    own = new[0].sign_survivors(ids)
    with pytest.raises(SecAggAbort, match="does not cover this survivor list"):
        new[0].unmask(ids, {0: own, 1: old_sigs[1]})
    # with a second signature of this round the same client answers
    fresh = {0: own, 1: new[1].sign_survivors(ids)}
    reply = new[0].unmask(ids, fresh)
    assert sorted(reply) == ids and all(kind == "b" for kind, _ in reply.values())


def test_one_signer_counts_once_whatever_the_key_type():
    """A signature listed twice (under the ids 1 and "1") is one signer: below t = 2, nothing is revealed."""
    ids, t = [0, 1, 2], 2
    identities, directory = IdentityDirectory.provision(ids)
    cl, _, _ = _round(ids, 1, identities, directory, t)
    sig1 = cl[1].sign_survivors(ids)
    with pytest.raises(SecAggAbort, match="only 1 clients signed"):
        cl[1].unmask(ids, {1: sig1, "1": sig1})


def test_unmask_sum_refuses_uploads_with_different_tensors():
    """A survivor whose upload names tensors the others do not have is refused, not silently dropped from the sum."""
    ups = {u: _update(u, 8) for u in range(3)}
    _, _, view = secure_aggregate(ups, {u: 1.0 for u in ups}, round_index=4)
    view.masked[2] = {**view.masked[2], "extra": torch.zeros(3, dtype=torch.int64)}
    with pytest.raises(ValueError, match="different keys"):
        unmask_sum(view, [0, 1, 2], 4)


def test_secure_aggregate_refuses_mismatched_or_zero_weights():
    ups = {u: _update(u, 8) for u in range(3)}
    with pytest.raises(ValueError, match="one entry per client"):
        secure_aggregate(ups, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0})
    with pytest.raises(ValueError, match="one entry per client"):
        secure_aggregate(ups, {0: 1.0, 1: 1.0})
    with pytest.raises(ValueError, match="total weight"):
        secure_aggregate(ups, {u: 0.0 for u in ups})
