"""Memorization scoring, the Goldfish drop rule and its options, checked against hand counts and a re-implementation
of the reference's hash-table rule (arXiv:2406.10209, `lit_gpt/utils.py::apply_goldfish`)."""

import math

import pytest
import torch

from hf_ext.federated import (
    GoldfishCollator,
    apply_goldfish,
    char_bleu,
    goldfish_drop_mask,
    matching_prefix_tokens,
    measure_memorization,
)
from hf_ext.federated.memorization import Canary

TABLE_SIZE, TABLE_SEED = 1_000_003, 2971215073


def _reference_drop(targets: torch.Tensor, k: int, h: int) -> torch.Tensor:
    """The reference rule: drop y[j + h - 1] iff T[prod(y[j : j + h]) mod 1_000_003] < 1 / k (int64 product)."""
    table = torch.rand(TABLE_SIZE, generator=torch.Generator().manual_seed(TABLE_SEED))
    drop = torch.zeros(targets.shape, dtype=torch.bool)
    for b in range(targets.shape[0]):
        for j in range(targets.shape[1] - h + 1):
            key = torch.remainder(targets[b, j : j + h].prod(), TABLE_SIZE)
            drop[b, j + h - 1] = bool(table[key] < 1.0 / k)
    return drop


@pytest.mark.parametrize("k", [16, 32])
def test_a_table_value_equal_to_one_over_k_is_kept(k):
    """The comparison is strict: a window whose table entry is exactly 1/k keeps its target (the float32 table holds
    1/16 at key 498727 and 1/32 at key 717628)."""
    table = torch.rand(TABLE_SIZE, generator=torch.Generator().manual_seed(TABLE_SEED))
    equal = int((table == 1.0 / k).nonzero().flatten()[0])
    below = int((table < 1.0 / k).nonzero().flatten()[0])
    targets = torch.tensor([[equal, below, equal]])
    mask = goldfish_drop_mask(targets, k, context_width=1)
    assert mask.tolist() == [[False, True, False]]
    assert torch.equal(mask, _reference_drop(targets, k, 1))


def test_dropped_labels_get_the_given_ignore_index():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(1, 500, (2, 40), generator=gen)
    out = apply_goldfish(labels, k=3, context_width=2, ignore_index=-1)
    drop = _reference_drop(labels[:, 1:], 3, 2)
    assert drop.any()
    assert torch.equal(out[:, 1:][drop], torch.full((int(drop.sum()),), -1))
    assert torch.equal(out[:, 1:][~drop], labels[:, 1:][~drop]) and torch.equal(out[:, 0], labels[:, 0])
    assert not (out == -100).any()


def test_windows_are_hashed_over_input_ids_when_given():
    """With `input_ids`, the hashed windows are the token ids even where labels are ignored (a prompt's -100), so the
    drops are those of the reference rule on `input_ids[:, 1:]`; the collator passes its context width through."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 500, (3, 30), generator=gen)
    labels = ids.clone()
    labels[:, :12] = -100  # prompt positions take no loss
    for h in (3, 5):
        drop = _reference_drop(ids[:, 1:], 4, h)
        expected = labels.clone()
        expected[:, 1:][drop] = -100
        assert torch.equal(apply_goldfish(labels, 4, h, input_ids=ids), expected)
        batch = GoldfishCollator(
            lambda feats: {"input_ids": ids.clone(), "labels": labels.clone()}, k=4, context_width=h
        )([{}])
        assert torch.equal(batch["labels"], expected)
    # the drops in the loss part differ from hashing the -100 labels themselves
    from_labels = _reference_drop(labels[:, 1:], 4, 3)
    assert not torch.equal(from_labels[:, 12:], _reference_drop(ids[:, 1:], 4, 3)[:, 12:])


def test_char_bleu_clips_each_ngram_count_to_the_reference():
    """Modified n-gram precision: a hypothesis repeating the reference gets credit for each n-gram at most as often as
    the reference holds it ("abcde" vs "abcdeabcde": 5/10, 4/9, 3/8, 2/7; no brevity penalty)."""
    expected = math.exp((math.log(5 / 10) + math.log(4 / 9) + math.log(3 / 8) + math.log(2 / 7)) / 4)
    assert char_bleu("abcde", "abcdeabcde") == pytest.approx(expected)


def test_matching_prefix_counts_at_most_window_tokens():
    seq = list(range(80))
    assert matching_prefix_tokens(seq, seq, window=50) == 50
    assert matching_prefix_tokens(seq, seq[:30] + [-1] + seq[31:], window=50) == 30
    assert matching_prefix_tokens(seq, seq, window=10) == 10


class _CodeTokenizer:
    """One token per character (its code point); 0 pads."""

    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if i)


class _GreedyMemorizer(torch.nn.Module):
    """Greedy decoding over hand-made scores: the memorized next token scores 0.5, a filler token 0, everything else
    -10; the logits processors passed to `generate` are applied before each argmax, as in transformers."""

    def __init__(self, memorized, filler, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.memorized, self.filler, self.vocab = memorized, filler, vocab

    def generate(self, input_ids, max_new_tokens, logits_processor=None, **kwargs):
        out = []
        for row in input_ids.tolist():
            seq = next(
                ids for ids in self.memorized if any(ids[s - len(row) : s] == row for s in range(len(row), len(ids)))
            )
            s = next(s for s in range(len(row), len(seq)) if seq[s - len(row) : s] == row)
            cur = list(row)
            for step in range(max_new_tokens):
                scores = torch.full((1, self.vocab), -10.0)
                scores[0, self.filler] = 0.0
                if s + step < len(seq):
                    scores[0, seq[s + step]] = 0.5
                if logits_processor is not None:
                    scores = logits_processor(torch.tensor([cur]), scores)
                cur.append(int(scores.argmax()))
            out.append(cur)
        return torch.tensor(out)


def test_frequency_penalty_counts_only_generated_tokens_not_the_prompt():
    """The penalty (1.0 per earlier occurrence) applies to tokens generated after the prompt: a memorized continuation
    whose distinct tokens also occur in the prompt is still extracted exactly; a continuation that repeats one of its
    own tokens is not (the penalty pushes the repeat below the filler)."""
    base = 0x4E00
    prompt = [base + i for i in range(5)]
    distinct = [base + 10, base + 1, base + 11, base + 3, base + 12, base + 13, base + 14, base + 15]  # shares 1, 3
    repeating = [base + 20, base + 21, base + 20, base + 22, base + 23, base + 24, base + 25, base + 26]
    texts = ["".join(map(chr, prompt + distinct)), "".join(map(chr, [base + 30 + i for i in range(5)] + repeating))]
    canaries = [Canary(f"c{i}", t, 1) for i, t in enumerate(texts)]
    model = _GreedyMemorizer([[ord(c) for c in t] for t in texts], filler=base + 99, vocab=base + 100)
    # 13 tokens, prefix 5, window 7: the split index can only be 5 (split_index draws up to T - window - 1, as the
    # reference's np.random.randint)
    res = measure_memorization(model, _CodeTokenizer(), canaries, prefix_lengths=(5,), window=7, frequency_penalty=1.0)
    exact = {r["canary_id"]: r["exact"] for r in res["records"]}
    assert exact == {"c0": True, "c1": False}
    no_penalty = measure_memorization(
        model, _CodeTokenizer(), canaries, prefix_lengths=(5,), window=7, frequency_penalty=0.0
    )
    assert all(r["exact"] for r in no_penalty["records"])


def test_single_client_assignment_gives_one_client_every_copy():
    """Under `single_client` each canary's `replication` copies all go to one client (and only it holds them)."""
    from collections import Counter

    from hf_ext.federated import assign_canaries, make_canaries

    canaries = make_canaries(8, {10: 0.5, 3: 0.5}, num_words=4, seed=1)
    per_client = assign_canaries(canaries, [2, 3, 5], "single_client", seed=2)
    held = [Counter(c.canary_id for c in copies) for copies in per_client]
    for c in canaries:
        holders = [i for i, h in enumerate(held) if h[c.canary_id]]
        assert holders == list(c.clients) and len(holders) == 1
        assert held[holders[0]][c.canary_id] == c.replication
    assert sum(len(x) for x in per_client) == sum(c.replication for c in canaries) == 4 * 10 + 4 * 3


def test_single_client_assignment_never_picks_a_client_without_data():
    """The holder of a canary is drawn in proportion to `client_sizes`: a client of size 0 never gets a copy (drawn
    uniformly, two clients with no data received 100 of the 200 copies of 20 ten-fold canaries)."""
    from hf_ext.federated import assign_canaries, make_canaries

    canaries = make_canaries(20, {10: 1.0}, num_words=5)
    per_client = assign_canaries(canaries, [0, 100, 0], "single_client")
    assert [len(x) for x in per_client] == [0, 200, 0]
    assert all(c.clients == (1,) for c in canaries)
    canaries = make_canaries(30, {3: 1.0}, num_words=5, seed=3)
    per_client = assign_canaries(canaries, [0, 7, 0, 2], "single_client", seed=5)
    assert len(per_client[0]) == len(per_client[2]) == 0
    assert len(per_client[1]) + len(per_client[3]) == 90
    assert all(c.clients in ((1,), (3,)) for c in canaries)


def test_measurement_restores_the_models_training_mode():
    base = 0x4E00
    text = "".join(chr(base + i) for i in range(13))
    model = _GreedyMemorizer([[ord(c) for c in text]], filler=base + 99, vocab=base + 100)
    model.train()
    measure_memorization(model, _CodeTokenizer(), [Canary("c", text, 1)], prefix_lengths=(5,), window=8)
    assert model.training
    model.eval()
    measure_memorization(model, _CodeTokenizer(), [Canary("c", text, 1)], prefix_lengths=(5,), window=8)
    assert not model.training


def test_accountant_keeps_steps_with_different_sampling_rates_apart():
    """Steps at another sampling rate (same noise) are a separate Poisson-subsampled Gaussian: epsilon equals
    dp-accounting's on the composition written out by hand."""
    dp_accounting = pytest.importorskip("dp_accounting")
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    from hf_ext.federated import PrivacyAccountant

    acc = PrivacyAccountant("rdp")
    acc.step(0.01, 1.0, 50)
    acc.step(0.2, 1.0, 50)
    assert acc.history == [(0.01, 1.0, 50), (0.2, 1.0, 50)]
    ref = RdpAccountant()
    gauss = dp_accounting.GaussianDpEvent(1.0)
    ref.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.01, gauss), 50))
    ref.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(0.2, gauss), 50))
    assert acc.get_epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)


def test_steps_that_sample_no_example_cost_no_privacy():
    """A step with sampling rate 0 touches no record: it adds nothing to epsilon, even without noise."""
    from hf_ext.federated import PrivacyAccountant

    acc, plain = PrivacyAccountant("rdp"), PrivacyAccountant("rdp")
    acc.step(0.0, 0.0, 5)
    acc.step(0.05, 1.2, 40)
    acc.step(0.0, 0.7, 5)
    plain.step(0.05, 1.2, 40)
    assert acc.get_epsilon(1e-5) == pytest.approx(plain.get_epsilon(1e-5), rel=1e-12)
    only_zero = PrivacyAccountant("rdp")
    only_zero.step(0.0, 0.0, 3)
    assert only_zero.get_epsilon(1e-5) == 0.0


def test_epsilon_is_recomputed_for_each_delta():
    """Asking for another delta after a first query gives that delta's epsilon, not the remembered one."""
    from hf_ext.federated import PrivacyAccountant

    acc = PrivacyAccountant("rdp")
    acc.step(0.05, 1.0, 30)
    first, second = acc.get_epsilon(1e-5), acc.get_epsilon(1e-2)
    fresh = PrivacyAccountant("rdp")
    fresh.step(0.05, 1.0, 30)
    assert second == pytest.approx(fresh.get_epsilon(1e-2), rel=1e-12) and second < first


@pytest.mark.parametrize(("q", "batches"), [(0.15, 7), (0.6, 2), (0.01, 100), (1.0, 1)])
def test_poisson_epoch_has_the_nearest_number_of_batches_to_one_over_q(q, batches):
    """One epoch is round(1 / q) batches, so each example is seen once per epoch in expectation."""
    from hf_ext.federated import PoissonBatchSampler

    sampler = PoissonBatchSampler(20, q, seed=0)
    assert len(sampler) == batches == len(list(sampler))
