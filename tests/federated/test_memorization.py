"""Memorization metrics on hand-made examples, the frequency penalty and canary injection."""

import math
import random

import pytest
import torch

from hf_ext.federated import (
    FrequencyPenaltyLogitsProcessor,
    assign_canaries,
    char_bleu,
    make_canaries,
    matching_prefix_tokens,
    measure_memorization,
    score_continuation,
    split_index,
    summarize_records,
)


def test_char_bleu_hand_computed():
    assert char_bleu("abcdef", "abcdef") == pytest.approx(1.0)
    assert char_bleu("abcdef", "uvwxyz") == 0.0
    # hypothesis "abcx" vs reference "abcd": p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> BLEU 0 (no smoothing)
    assert char_bleu("abcd", "abcx") == 0.0
    # "abcde" vs "abcdx": p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2; same length -> no brevity penalty
    expected = math.exp((math.log(4 / 5) + math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4)
    assert char_bleu("abcde", "abcdx") == pytest.approx(expected)
    # a short hypothesis is penalised: "abcd" vs "abcdefgh": all precisions 1, BP = exp(1 - 8/4)
    assert char_bleu("abcdefgh", "abcd") == pytest.approx(math.exp(1 - 2))


def test_exact_and_approximate_on_hand_made_example(small_tokenizer):
    truth = " ".join(f"word{i}" for i in range(80))
    ids = small_tokenizer(truth, add_special_tokens=False)["input_ids"]
    assert len(ids) > 60
    same = score_continuation(small_tokenizer, truth, truth)
    assert same["exact"] and same["matching_tokens"] == 50 and same["bleu"] == 1.0 and same["approximate"]
    changed = list(ids)
    changed[10] = (
        small_tokenizer.convert_tokens_to_ids("Z") if changed[10] != small_tokenizer.convert_tokens_to_ids("Z") else 5
    )
    assert matching_prefix_tokens(ids, changed) == 10
    gen = small_tokenizer.decode(changed)
    one_off = score_continuation(small_tokenizer, truth, gen)
    assert not one_off["exact"] and one_off["approximate"]  # one token off: approximate, not exact
    other = score_continuation(small_tokenizer, truth, "completely different text " * 10)
    assert not other["exact"] and not other["approximate"]


def test_frequency_penalty_processor():
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    ids = torch.tensor([[3, 3, 1, 3, 3, 0]])  # prompt [3, 3]; generated [1, 3, 3, 0]
    torch.testing.assert_close(FrequencyPenaltyLogitsProcessor(0.0, 2)(ids, scores.clone()), scores)
    out = FrequencyPenaltyLogitsProcessor(0.5, 2)(ids, scores.clone())
    torch.testing.assert_close(out, torch.tensor([[1.0 - 0.5, 2.0 - 0.5, 3.0, 4.0 - 1.0]]))


def test_split_index_rule():
    rng = random.Random(0)
    assert split_index(549, 500, 50, rng) is None
    assert split_index(550, 500, 50, rng) is None  # the reference skips T <= 550
    draws = [split_index(700, 500, 50, rng) for _ in range(200)]
    assert min(draws) >= 500 and max(draws) <= 649


def test_summary_per_replication_and_prefix_length():
    records = [
        {"canary_id": "a", "replication": 10, "prefix_length": 10, "exact": True, "approximate": True},
        {"canary_id": "a", "replication": 10, "prefix_length": 50, "exact": False, "approximate": True},
        {"canary_id": "b", "replication": 1, "prefix_length": 10, "exact": False, "approximate": False},
        {"canary_id": "b", "replication": 1, "prefix_length": 50, "exact": False, "approximate": True},
    ]
    s = summarize_records(records, [10, 50])
    assert s["per_replication"][10]["exact"] == {10: 1.0, 50: 0.0}
    assert s["per_replication"][10]["exact_mean"] == 0.5 and s["per_replication"][10]["exact_worst"] == 1.0
    assert s["per_replication"][1]["approximate_mean"] == 0.5
    assert s["overall"]["exact"][10] == 0.5
    # one distinct canary per replication count, two overall, each probed at two prefix lengths
    assert s["per_replication"][10]["num_canaries"] == s["per_replication"][1]["num_canaries"] == 1
    assert s["overall"]["num_canaries"] == 2


def test_summary_counts_distinct_canaries_not_probes():
    """Paper defaults probe every canary at five prefix lengths: `num_canaries` is the number of canaries (2 here),
    not the number of (canary, prefix length) records (10)."""
    lengths = (10, 50, 100, 200, 500)
    records = [
        {"canary_id": f"canary-{c}", "replication": 10, "prefix_length": L, "exact": False, "approximate": False}
        for c in range(2)
        for L in lengths
    ]
    s = summarize_records(records, lengths)
    assert s["per_replication"][10]["num_canaries"] == 2 and s["overall"]["num_canaries"] == 2


def test_summary_leaves_out_cells_without_probes():
    """A (replication, prefix length) cell with no probe was reported as a 0.0 rate and pulled the mean down
    (replication 1 probed and fully extracted only at length 10 gave {10: 1.0, 50: 0.0}, mean 0.5)."""
    records = [
        {"canary_id": "a", "replication": 1, "prefix_length": 10, "exact": True, "approximate": True, "bleu": 1.0},
        {"canary_id": "b", "replication": 10, "prefix_length": 50, "exact": False, "approximate": True, "bleu": 0.8},
    ]
    s = summarize_records(records, [10, 50])
    one, ten = s["per_replication"][1], s["per_replication"][10]
    assert one["exact"] == {10: 1.0} and one["approximate"] == {10: 1.0}
    assert one["exact_mean"] == 1.0 and one["exact_worst"] == 1.0
    assert ten["exact"] == {50: 0.0} and ten["approximate"] == {50: 1.0} and ten["approximate_mean"] == 1.0
    assert s["overall"]["exact"] == {10: 1.0, 50: 0.0}
    empty = summarize_records([], [10, 50])
    assert empty["per_replication"] == {} and empty["overall"]["exact"] == {}
    assert all(math.isnan(empty["overall"][k]) for k in ("exact_mean", "approximate_worst", "bleu_mean"))


def test_summary_overall_worst_case_is_over_length_and_replication_cells():
    """Spec A.7: the approximate worst case is the max over all (prefix length, duplication) cells. Pooling the
    replication counts per length first reported 0.3 for three 10x canaries all extracted among seven 1x ones."""
    records = [
        {"canary_id": f"{rep}-{i}", "replication": rep, "prefix_length": L, "exact": hit, "approximate": hit}
        for rep, n in ((10, 3), (1, 7))
        for i in range(n)
        for L in (10, 50)
        for hit in [rep == 10 and L == 10]
    ]
    s = summarize_records(records, [10, 50])
    assert s["overall"]["approximate"] == {10: 0.3, 50: 0.0} and s["overall"]["approximate_mean"] == 0.15
    assert s["overall"]["approximate_worst"] == 1.0 and s["overall"]["exact_worst"] == 1.0
    assert s["per_replication"][10]["approximate_worst"] == 1.0
    assert s["per_replication"][1]["exact_worst"] == 0.0  # the reference's exact worst case (1x group)


class _OracleLM(torch.nn.Module):
    """Continues memorized canaries perfectly and emits a constant token otherwise."""

    def __init__(self, memorized: list[list[int]], filler: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.memorized, self.filler = memorized, filler

    def generate(self, input_ids, max_new_tokens, **kwargs):
        rows = []
        for row in input_ids.tolist():
            cont = [self.filler] * max_new_tokens
            for ids in self.memorized:
                for s in range(len(row), len(ids)):
                    if ids[s - len(row) : s] == row:
                        cont = (ids[s:] + [self.filler] * max_new_tokens)[:max_new_tokens]
                        break
            rows.append(row + cont)
        return torch.tensor(rows)


def test_measure_memorization_pipeline(small_tokenizer):
    canaries = make_canaries(4, {10: 0.5, 1: 0.5}, num_words=60, seed=0)
    assert sorted(c.replication for c in canaries) == [1, 1, 10, 10]
    memorized = [
        small_tokenizer(c.text, add_special_tokens=False)["input_ids"] for c in canaries if c.replication == 10
    ]
    model = _OracleLM(memorized, filler=small_tokenizer.convert_tokens_to_ids("Z"))
    res = measure_memorization(model, small_tokenizer, canaries, prefix_lengths=(5, 20), frequency_penalty=0.0)
    assert res["num_skipped"] == 0
    assert res["per_replication"][10]["exact"] == {5: 1.0, 20: 1.0}
    assert res["per_replication"][1]["exact_mean"] == 0.0 and res["per_replication"][1]["approximate_mean"] == 0.0
    assert len(res["records"]) == 8
    with pytest.raises(ValueError, match="canaries"):
        measure_memorization(model, small_tokenizer, [])
    with pytest.raises(ValueError, match="prefix_lengths"):
        measure_memorization(model, small_tokenizer, canaries, prefix_lengths=(0,))


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5, float("nan")])
def test_measure_memorization_refuses_a_bleu_threshold_outside_0_1(small_tokenizer, threshold):
    """With bleu_threshold 0 every probe counts as approximately memorized (an untrained model reported a 100%
    rate); above 1 none can; NaN compares false with everything."""
    canaries = make_canaries(2, {1: 1.0}, num_words=60, seed=0)
    model = _OracleLM([], filler=small_tokenizer.convert_tokens_to_ids("Z"))
    with pytest.raises(ValueError, match="bleu_threshold"):
        measure_memorization(model, small_tokenizer, canaries, prefix_lengths=(5,), bleu_threshold=threshold)
    # the bound itself is valid: an oracle that memorized nothing is approximately extracted at rate 0
    res = measure_memorization(
        model, small_tokenizer, canaries, prefix_lengths=(5,), bleu_threshold=1.0, frequency_penalty=0.0
    )
    assert res["overall"]["approximate"] == {5: 0.0}


@pytest.mark.parametrize(
    "num_canaries,expected",
    [
        # nearest integer of num_canaries * fraction per level (largest count first), the rest at the smallest count
        (2, [10, 1]),  # 0.6 -> 1 ten-fold canary, 1.4 -> 1 single one
        (9, [10, 10, 10] + [1] * 6),  # 2.7 -> 3, 6.3 -> 6
        (10, [10, 10, 10] + [1] * 7),  # exact: 3 and 7
    ],
)
def test_make_canaries_rounds_each_levels_count_to_the_nearest_integer(num_canaries, expected):
    """With the paper's mix (30% x10, 70% x1) the level counts are rounded, not floored: flooring gave no ten-fold
    canary at all out of 2 (0.6 -> 0) and 2 instead of 3 out of 9."""
    assert [c.replication for c in make_canaries(num_canaries, num_words=3)] == expected
    assert [c.replication for c in make_canaries(num_canaries, {10: 0.3, 1: 0.7}, num_words=3)] == expected


def test_assign_canaries():
    canaries = make_canaries(10, {10: 0.3, 1: 0.7}, num_words=5)
    per_client = assign_canaries(canaries, [100, 200, 700], "proportional")
    assert sum(len(x) for x in per_client) == 3 * 10 + 7
    assert len(per_client[2]) > len(per_client[0])
    assert all(c.clients for c in canaries)
    single = assign_canaries(make_canaries(10, num_words=5), [1, 1, 1], "single_client")
    ids = [{c.canary_id for c in x} for x in single]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])
    with pytest.raises(ValueError, match="strategy"):
        assign_canaries(canaries, [1, 1], "iid")
    with pytest.raises(ValueError, match="client_sizes"):
        assign_canaries(canaries, [0, 0])


def test_canary_exposure_is_the_loss_gap_and_grows_with_training(small_tokenizer):
    from hf_ext.federated import canary_exposure, text_losses

    from .conftest import tiny_llama

    model = tiny_llama(len(small_tokenizer), seed=1)
    canaries = make_canaries(4, {1: 1.0}, num_words=20, seed=3)
    members, references = [c.text for c in canaries[:2]], [c.text for c in canaries[2:]]
    ids = small_tokenizer(members[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert text_losses(model, small_tokenizer, members[:1])[0] == pytest.approx(
        float(model(input_ids=ids, labels=ids).loss), rel=1e-6
    )
    before = canary_exposure(model, small_tokenizer, members, references)
    m, r = text_losses(model, small_tokenizer, members), text_losses(model, small_tokenizer, references)
    assert before == pytest.approx(sum(r) / 2 - sum(m) / 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):  # memorize the two members
        for text in members:
            x = small_tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            opt.zero_grad()
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
    assert canary_exposure(model, small_tokenizer, members, references) > before + 1.0
    with pytest.raises(ValueError, match="non-empty"):
        canary_exposure(model, small_tokenizer, [], references)


@pytest.mark.parametrize(
    "counts", [{1: float("nan")}, {10: 0.5, 1: float("inf")}, {2.5: 1.0}, {True: 1.0}, {0: 1.0}, {1: -0.5}]
)
def test_make_canaries_refuses_bad_replication_counts_by_name(counts):
    """`{1: nan}` used to fail with a bare "cannot convert float NaN to integer"; `{2.5: 1.0}` was cut to 2."""
    with pytest.raises(ValueError, match="`replication_counts` must map integer counts >= 1"):
        make_canaries(4, counts, num_words=5)


@pytest.mark.parametrize("lora", [False, True])
def test_measure_memorization_decodes_greedily_whatever_the_models_generation_config(small_tokenizer, lora):
    """fl9 #3: `generate` applied the model's own generation_config (a checkpoint's repetition_penalty,
    no_repeat_ngram_size, ...), so the "greedy" extraction was not greedy. The canary here is the model's own greedy
    continuation: extracted exactly with a default generation_config, and it must stay so with one that ships decoding
    settings (which are restored afterwards)."""
    from hf_ext.federated import Canary, FederatedArguments, apply_lora

    from .conftest import tiny_llama

    model = tiny_llama(len(small_tokenizer), seed=3)
    prompt = torch.tensor([small_tokenizer("the old man said", add_special_tokens=False)["input_ids"][:5]])
    greedy = model.generate(
        input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=40, do_sample=False, pad_token_id=0
    )
    canaries = [Canary("c0", small_tokenizer.decode(greedy[0]), 1)]
    if lora:
        model = apply_lora(model, FederatedArguments(lora_r=2, lora_alpha=4.0))

    def measure(m):
        return measure_memorization(m, small_tokenizer, canaries, (5,), window=20, frequency_penalty=0.0)["records"]

    plain = measure(model)
    assert plain[0]["exact"] and plain[0]["matching_tokens"] == 20
    base = model.get_base_model() if lora else model
    base.generation_config.repetition_penalty, base.generation_config.no_repeat_ngram_size = 1.5, 3
    assert measure(model) == plain
    assert base.generation_config.repetition_penalty == 1.5 and base.generation_config.no_repeat_ngram_size == 3
