"""Tests added after hand-made mutation testing of the privacy-critical federated code: each one fails on a small
semantic change (mutant) that the other tests let through, and checks against an independent reference (float64
closed forms, dp-accounting's own composition, a pure-Python Goldfish rule, a brute-force SecAgg sum)."""

import math

import pytest
import torch

from hf_ext.federated import (
    PrivacyAccountant,
    aggregate_round,
    clip_update,
    dp_gradient,
    goldfish_drop_mask,
)

# ------------------------------------------------------------------------------------------------ DP-SGD


def _tiny_model():
    """A 1-layer Llama in float64 with two trainable tensors (the rest frozen, as with LoRA)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaForCausalLM(cfg).double()
    model.set_attn_implementation("eager")
    for n, p in model.named_parameters():
        p.requires_grad_(n in ("model.norm.weight", "model.layers.0.mlp.down_proj.weight"))
    return model


def _loop_clipped_sum(model, ids, clip):
    """Independent reference: one autograd backward per example, clipped over all trainable tensors in float64."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in trainable.items()}
    norms = []
    for i in range(ids.shape[0]):
        model.zero_grad()
        model(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss.backward()
        g = {n: p.grad.detach().double().clone() for n, p in trainable.items()}
        norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values()))
        norms.append(norm)
        factor = min(1.0, clip / norm)
        for n in total:
            total[n] += factor * g[n]
    model.zero_grad()
    return total, norms


def test_dp_gradient_divides_by_the_expected_batch_size_and_leaves_small_gradients_unclipped():
    """DP-SGD's average is `(sum_i clip(g_i) + noise) / (q N)`, not over the realised Poisson batch size, and clipping
    only scales down gradients above `C` (a normalizing "clip" would also scale small ones up)."""
    model = _tiny_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (3, 10), generator=g)
    _, norms = _loop_clipped_sum(model, ids, 1.0)
    clip = (min(norms) + max(norms)) / 2  # some samples below the clip norm (kept as is), one above it (clipped)
    assert min(norms) < clip / 1.1 and max(norms) > clip * 1.1
    ref, _ = _loop_clipped_sum(model, ids, clip)
    out, _ = dp_gradient(model, ids, ids.clone(), clip, noise_multiplier=0.0, expected_batch_size=10)
    assert set(out) == set(ref)
    # the clip factor C / (norm + 1e-6) (as Opacus) is within 1e-6 / norm of the exact one
    err = math.sqrt(sum(float((out[n].double() - ref[n] / 10).pow(2).sum()) for n in ref))
    assert err <= 1e-4 * math.sqrt(sum(float((ref[n] / 10).pow(2).sum()) for n in ref))


def test_accountant_keeps_steps_with_different_noise_apart():
    """Steps with another noise multiplier are a new entry: epsilon is that of dp-accounting's composition of both."""
    import dp_accounting
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    acc = PrivacyAccountant("rdp")
    acc.step(0.1, 1.0, 40)
    acc.step(0.1, 1.0, 10)
    acc.step(0.1, 3.0, 50)
    assert acc.history == [(0.1, 1.0, 50), (0.1, 3.0, 50)] and acc.steps == 100
    ref = RdpAccountant()
    for sigma in (1.0, 3.0):
        ref.compose(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(sigma)), 50)
    assert acc.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    low = PrivacyAccountant("rdp")
    low.step(0.1, 3.0, 100)
    assert acc.get_epsilon(1e-5) > 1.5 * low.get_epsilon(1e-5)  # the sigma-1 steps dominate


def test_one_step_without_noise_makes_epsilon_infinite_whatever_came_before():
    acc = PrivacyAccountant("rdp")
    acc.step(0.1, 1.0, 10)
    assert math.isfinite(acc.get_epsilon(1e-5))
    acc.step(0.1, 0.0, 1)
    assert math.isinf(acc.get_epsilon(1e-5))
    acc.step(0.1, 1.0, 10)
    assert math.isinf(acc.get_epsilon(1e-5))


# ------------------------------------------------------------------------------------------------ client-level DP


def test_clip_update_uses_the_global_l2_norm():
    """Float64 closed form: an update of L2 norm 5 is scaled to norm C exactly; one of L2 norm < C (but L1 norm > C)
    is unchanged."""
    up = {"a": torch.tensor([3.0, 0.0], dtype=torch.float64), "b": torch.tensor([[0.0], [4.0]], dtype=torch.float64)}
    out = clip_update(up, 2.0)
    torch.testing.assert_close(out["a"], up["a"] * 0.4)
    torch.testing.assert_close(out["b"], up["b"] * 0.4)
    small = {"a": torch.tensor([0.6, 0.6, 0.6], dtype=torch.float64), "b": torch.tensor([0.6], dtype=torch.float64)}
    kept = clip_update(small, 1.5)  # L2 norm 1.2 <= 1.5 < L1 norm 2.4
    for k in small:
        torch.testing.assert_close(kept[k], small[k])


def test_aggregate_round_with_client_dp_divides_by_the_federation_size():
    """With `num_clients=5` and 3 clients present the noiseless release is `x + sum_c clip(u_c) / 5`."""
    g0 = {"w": torch.zeros(3, dtype=torch.float64)}
    ups = [torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.1, 0.0]), torch.tensor([0.0, 0.0, -2.0])]
    states = [{"w": u.double()} for u in ups]
    clipped = [u.double() * min(1.0, 1.0 / float(u.double().norm())) for u in ups]
    out = aggregate_round(g0, states, [5.0, 1.0, 1.0], "full", None, 1.0, 0.0, torch.Generator(), num_clients=5)
    torch.testing.assert_close(out["w"], sum(clipped) / 5)


# ------------------------------------------------------------------------------------------------ Goldfish


def _reference_goldfish(targets: torch.Tensor, k: int, h: int) -> torch.Tensor:
    """The `hash-table` rule of ahans30/goldfish-loss, re-derived in pure Python: the table is `torch.rand(1_000_003)`
    with seed 2971215073; target `t >= h - 1` is dropped iff `table[(prod of targets[t-h+1..t], wrapped to int64)
    mod 1_000_003] < 1/k`."""
    table = torch.rand(1_000_003, generator=torch.Generator().manual_seed(2971215073)).tolist()
    out = torch.zeros(targets.shape, dtype=torch.bool)
    for b, row in enumerate(targets.tolist()):
        for t in range(h - 1, len(row)):
            p = 1
            for x in row[t - h + 1 : t + 1]:
                p = (p * x + 2**63) % 2**64 - 2**63  # int64 wrap-around, as torch's prod
            out[b, t] = table[p % 1_000_003] < 1 / k
    return out


@pytest.mark.parametrize("k,h,high", [(4, 13, 50_000), (3, 4, 1000), (8, 13, 128_256)])
def test_goldfish_mask_equals_the_reference_rule(k, h, high):
    g = torch.Generator().manual_seed(k + h)
    targets = torch.randint(1, high, (3, 120), generator=g)
    mask = goldfish_drop_mask(targets, k, h)
    assert torch.equal(mask, _reference_goldfish(targets, k, h))
    assert mask.any() and not mask.all()


def test_poisson_sampler_iterated_twice_draws_the_next_epoch():
    """Without `set_epoch` a second pass is epoch 1 (a fresh draw), never a replay of epoch 0."""
    from hf_ext.federated import PoissonBatchSampler

    sampler = PoissonBatchSampler(40, 0.25, seed=7)
    first, second = list(sampler), list(sampler)
    assert first != second
    again = PoissonBatchSampler(40, 0.25, seed=7)
    again.set_epoch(1)
    assert list(again) == second


# ------------------------------------------------------------------------------------------------ memorization


class _CharTokenizer:
    """One token per character: token windows are character windows (enough for the scoring rules)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)


def test_exact_needs_all_window_tokens_and_approximate_includes_the_threshold():
    from hf_ext.federated import score_continuation

    tok = _CharTokenizer()
    ref = "the quick brown fox jumps over the lazy dog again!"  # 50 characters = 50 tokens
    assert score_continuation(tok, ref, ref)["exact"]
    last_off = score_continuation(tok, ref, ref[:49] + "?")
    assert last_off["matching_tokens"] == 49 and not last_off["exact"]  # 49 of 50 is not exact
    short = score_continuation(tok, ref[:40], ref[:40])
    assert short["matching_tokens"] == 40 and not short["exact"]  # fewer than `window` tokens to compare
    # character BLEU 0.748 (NLTK's sentence_bleu on strings), rounded to 0.75 as the reference does: approximate
    hyp = "the quick brown foY Yumps ovXr theYlazQ dog again!"
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score").sentence_bleu([ref], hyp)
    rec = score_continuation(tok, ref, hyp)
    assert round(nltk_bleu, 2) == rec["bleu"] == 0.75 and rec["approximate"]
    assert not score_continuation(tok, ref, hyp, bleu_threshold=0.76)["approximate"]


def test_split_index_leaves_a_full_window_after_the_prompt():
    import random

    from hf_ext.federated import split_index

    rng = random.Random(0)
    # the reference's np.random.randint(L, T - window) excludes T - window: T = L + window is skipped
    assert split_index(60, 10, 50, rng) is None
    assert {split_index(61, 10, 50, rng) for _ in range(100)} == {10}  # T = L + window + 1: one valid index
    assert {split_index(62, 10, 50, rng) for _ in range(200)} == {10, 11}


# ------------------------------------------------------------------------------------------------ secure aggregation


def _secagg_updates(ids, size=300, seed=4):
    g = torch.Generator().manual_seed(seed)
    return {u: {"a": torch.randn(size, generator=g, dtype=torch.float64) * 0.1,
                "b": torch.randn(2, 3, generator=g, dtype=torch.float64)} for u in ids}  # fmt: skip


def _brute_force_mean(ups, weights, ids):
    total = sum(weights[u] for u in ids)
    return {k: sum(weights[u] * ups[u][k] for u in ids) / total for k in ups[ids[0]]}


@pytest.mark.parametrize("round_index", [0, 5])
def test_dropout_recovery_in_any_round_gives_the_brute_force_sum(round_index):
    """The pairwise masks of a client that dropped before uploading are rebuilt for the round they were made in."""
    from hf_ext.federated import quantization_error_bound, secure_aggregate

    ids = [0, 1, 2, 3]
    ups = _secagg_updates(ids)
    weights = {0: 3.0, 1: 1.0, 2: 2.0, 3: 5.0}
    mean, total, _ = secure_aggregate(ups, weights, round_index=round_index, drop_before_upload=[2])
    ref = _brute_force_mean(ups, weights, [0, 1, 3])
    assert total == 9.0
    for k in ref:
        assert float((mean[k] - ref[k]).abs().max()) <= quantization_error_bound(3, total) + 1e-12


def test_unmask_sum_skips_masks_a_survivor_never_made_with_a_dropped_client():
    """Client 4's share message to client 3 is lost and client 4 then drops before uploading: clients 0-2 masked
    with 4 and client 3 did not. The server removes only the masks that were added (brute-force reference)."""
    from hf_ext.federated import IdentityDirectory, SecAggClient, ServerView, decode, unmask_sum

    ids, t, rnd = [0, 1, 2, 3, 4], 3, 1
    ups = _secagg_updates(ids, size=50)
    identities, directory = IdentityDirectory.provision(ids)
    clients = {u: SecAggClient(u, rnd, identity=identities[u], directory=directory, global_state={}) for u in ids}
    view = ServerView(threshold=t)
    view.public_keys = {u: c.advertise_keys() for u, c in clients.items()}
    view.ciphertexts = {u: c.share_keys(view.public_keys, t) for u, c in clients.items()}
    del view.ciphertexts[4][3]  # lost on its way: client 3 never masks with client 4
    survivors = [0, 1, 2, 3]
    for u in survivors:
        routed = {src: cts[u] for src, cts in view.ciphertexts.items() if u in cts}
        view.masked[u] = clients[u].masked_input(ups[u], 1.0, routed)
    view.survivor_signatures = {u: clients[u].sign_survivors(survivors) for u in survivors}
    for u in survivors:
        view.unmask_shares[u] = clients[u].unmask(survivors, view.survivor_signatures)
    total = unmask_sum(view, survivors, rnd)
    for k in ups[0]:
        ref = sum(ups[u][k] for u in survivors)
        assert float((decode(total[k]) - ref).abs().max()) <= len(survivors) * 2.0**-25 + 1e-12
