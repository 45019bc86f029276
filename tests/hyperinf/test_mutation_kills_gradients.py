"""Per-example LoRA gradients (layout, padding, layers) and the instruction-selection data helpers, each checked
against an independent computation: plain autograd on one example, hand-made token layouts, brute-force counts."""

from collections import Counter

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.hyperinf.selection import ANSWER_MARK, INSTRUCTIONS, build_instruction_task, evaluate_response_loss

PROMPT, ANSWER = 12, 5
KINDS = ("topic", "repeat", "continue")


@pytest.fixture(scope="module")
def instruction_task(small_tokenizer):
    return build_instruction_task(
        small_tokenizer, seed=3, prompt_tokens=PROMPT, answer_tokens=ANSWER, num_target=12, num_test=12,
        max_train=90, corrupt_rate=0.4, kinds=KINDS,
    )  # fmt: skip


@pytest.fixture(scope="module")
def documents(small_tokenizer):
    """Every corpus document by its first PROMPT tokens: (token ids, domain)."""
    from datasets import concatenate_datasets

    from hf_ext.data import load_corpus

    corpus = concatenate_datasets([load_corpus("train"), load_corpus("test")])
    ids = small_tokenizer(list(corpus["text"]), add_special_tokens=False)["input_ids"]
    by_prefix = {}
    for x, dom in zip(ids, corpus["domain"]):
        by_prefix.setdefault(tuple(x[:PROMPT]), []).append((x, dom))
    return by_prefix


def _split(tok, example):
    """(kind, document prefix, answer) read back from an example's tokens by the documented layout."""
    instr = tok(INSTRUCTIONS[example["kind"]], add_special_tokens=False)["input_ids"]
    mark = tok(ANSWER_MARK, add_special_tokens=False)["input_ids"]
    ids, labels = example["input_ids"], example["labels"]
    n_prompt = sum(1 for v in labels if v == -100)
    assert labels[:n_prompt] == [-100] * n_prompt and -100 not in labels[n_prompt:]
    assert labels[n_prompt:] == ids[n_prompt:]  # the loss is on the response tokens, aligned with them
    assert n_prompt == len(instr) + PROMPT + len(mark)
    assert ids[: len(instr)] == instr and ids[n_prompt - len(mark) : n_prompt] == mark
    return ids[len(instr) : len(instr) + PROMPT], ids[n_prompt:]


def _true_answer(tok, kind, doc_ids, domain):
    if kind == "topic":
        body = tok(" " + domain, add_special_tokens=False)["input_ids"]
    elif kind == "repeat":
        body = doc_ids[:ANSWER]
    else:
        body = doc_ids[PROMPT : PROMPT + ANSWER]
    return list(body) + [tok.eos_token_id]


def test_instruction_examples_follow_the_documented_layout_and_answers(instruction_task, documents, small_tokenizer):
    """Prompt = instruction + first prompt_tokens of a document + answer mark; a clean example's response is the
    domain (topic), the first answer_tokens (repeat) or the next answer_tokens (continue) of that document, plus EOS;
    documents too short for prompt + answer are never used."""
    train, target, test, corrupted = instruction_task
    checked = Counter()
    for part in (target, test, train):
        for k, ex in enumerate(part):
            prefix, answer = _split(small_tokenizer, ex)
            candidates = documents[tuple(prefix)]
            assert all(len(doc) >= PROMPT + ANSWER for doc, _ in candidates)
            clean = part is not train or not corrupted[k]
            if clean:
                truths = [_true_answer(small_tokenizer, ex["kind"], doc, dom) for doc, dom in candidates]
                assert answer in truths, (ex["kind"], answer, truths)
                checked[ex["kind"]] += 1
    assert min(checked[k] for k in KINDS) >= 5


def test_corruption_swaps_answers_within_a_kind_and_flags_exactly_the_changed_examples(
    instruction_task, documents, small_tokenizer
):
    """About corrupt_rate of the training examples are chosen; their responses are permuted among the chosen ones of
    the same kind (every answer still occurs once), an example is flagged iff its response is not its own answer."""
    train, _, _, corrupted = instruction_task
    n = len(train)
    assert list(train["corrupted"]) == [bool(c) for c in corrupted]
    own, got = [], []
    for ex in train:
        prefix, answer = _split(small_tokenizer, ex)
        (doc, dom), *_ = documents[tuple(prefix)]
        own.append(_true_answer(small_tokenizer, ex["kind"], doc, dom))
        got.append(answer)
    for k in range(n):
        assert (got[k] != own[k]) == bool(corrupted[k]), k
    for kind in KINDS:
        rows = [k for k in range(n) if train[k]["kind"] == kind and corrupted[k]]
        # the swapped responses are the own answers of other corrupted examples of the same kind (a permutation
        # of the chosen ones, of which the flagged ones are a subset)
        pool = Counter(tuple(own[k]) for k in range(n) if train[k]["kind"] == kind)
        for k in rows:
            assert pool[tuple(got[k])] >= 1
    assert sum(corrupted) <= int(round(0.4 * n))


def test_corrupted_share_is_the_rounded_rate_when_every_swap_changes_the_answer(small_tokenizer):
    """With distinct `continue` responses every chosen example gets another answer, so exactly
    round(corrupt_rate * n) examples are corrupted (0.25 * 86 = 21.5 -> 22)."""
    train, _, _, corrupted = build_instruction_task(
        small_tokenizer, seed=5, prompt_tokens=PROMPT, answer_tokens=ANSWER, num_target=4, num_test=4, max_train=86,
        corrupt_rate=0.25, kinds=("continue",),
    )  # fmt: skip
    assert len(train) == 86
    responses = [tuple(x[-ANSWER - 1 :]) for x in train["labels"]]
    assert len(set(responses)) == len(responses)  # a permutation of distinct answers: no swap is a no-op
    assert int(corrupted.sum()) == 22


def test_target_test_and_train_come_from_different_documents(instruction_task, small_tokenizer):
    """The target and test sets hold documents never in the training set (and not in each other)."""
    train, target, test, _ = instruction_task
    keys = [{tuple(_split(small_tokenizer, ex)[0]) + (ex["kind"],) for ex in part} for part in (train, target, test)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert (len(train), len(target), len(test)) == (90, 12, 12)


def test_only_documents_long_enough_for_prompt_and_answer_are_used(small_tokenizer):
    """A document is used iff it has at least prompt_tokens + answer_tokens tokens: with 100 + 100 the task holds
    exactly the corpus documents of >= 200 tokens, and every `continue` / `repeat` response has answer_tokens + EOS."""
    from datasets import concatenate_datasets

    from hf_ext.data import load_corpus

    corpus = concatenate_datasets([load_corpus("train"), load_corpus("test")])
    lengths = [len(x) for x in small_tokenizer(list(corpus["text"]), add_special_tokens=False)["input_ids"]]
    eligible = sum(n >= 200 for n in lengths)
    assert 30 < eligible < len(lengths) - 30 and sum(150 <= n < 200 for n in lengths) > 0
    train, target, test, _ = build_instruction_task(
        small_tokenizer, seed=0, prompt_tokens=100, answer_tokens=100, num_target=5, num_test=5, max_train=100_000,
        corrupt_rate=0.0, kinds=("repeat", "continue"),
    )  # fmt: skip
    assert len(train) + len(target) + len(test) == eligible
    for part in (train, target, test):
        assert all(sum(v != -100 for v in lab) == 101 for lab in part["labels"])


def _tiny_lm(vocab):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).double()


def test_response_loss_equals_per_example_cross_entropy_on_the_response_tokens():
    """Loss per response token, token accuracy and the mean per-example loss equal a one-example-at-a-time float64
    computation; prompt tokens and the batch's padding never count, and the model's train mode is restored."""
    vocab = 30
    model = _tiny_lm(vocab)
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n_prompt, n_answer in ((4, 3), (7, 2), (3, 6), (5, 1)):
        ids = torch.randint(1, vocab, (n_prompt + n_answer,), generator=gen).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    model.train()
    got = evaluate_response_loss(model, rows, batch_size=3)
    assert model.training
    model.eval()
    tot, cnt, hit, per = 0.0, 0, 0, []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            losses = []
            for t in range(1, len(r["input_ids"])):
                if r["labels"][t] == -100:
                    continue
                losses.append(-float(logp[t - 1, r["labels"][t]]))
                hit += int(int(logp[t - 1].argmax()) == r["labels"][t])
            tot += sum(losses)
            cnt += len(losses)
            per.append(sum(losses) / len(losses))
    assert got["loss"] == pytest.approx(tot / cnt, rel=1e-6)
    assert got["token_accuracy"] == pytest.approx(hit / cnt)
    assert got["example_loss"] == pytest.approx(float(np.mean(per)), rel=1e-6)


# Per-example LoRA gradients --------------------------------------------------------------------------------------
def _lora_lm(target_modules, vocab=40, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=3, lora_alpha=6, target_modules=target_modules))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:  # a trained-like adapter: every LoRA matrix non-zero
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def _autograd_grads(model, example):
    """One example's loss gradient with plain autograd, in eval mode (labels = input_ids where not given)."""
    model.eval()
    ids = torch.tensor([example["input_ids"]])
    labels = torch.tensor([example.get("labels", example["input_ids"])])
    params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    loss = model(input_ids=ids, labels=labels).loss
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def test_embedding_lora_matrices_are_laid_out_rank_first_like_linear_ones():
    """`lora_embedding_A` `(r, vocab)` is kept as is and `lora_embedding_B` `(dim, r)` is transposed to `(r, dim)`,
    and each example's streamed gradient equals plain autograd on that example alone in that layout."""
    from hf_ext.hyperinf import tracked_lora_parameters
    from hf_ext.hyperinf.gradients import PerExampleGradients

    model = _lora_lm(["embed_tokens", "q_proj"])
    tracked = tracked_lora_parameters(model)
    emb_a = next(m for m in tracked if "lora_embedding_A" in m.name)
    emb_b = next(m for m in tracked if "lora_embedding_B" in m.name)
    assert (emb_a.kind, emb_a.shape) == ("lora_A", (3, 40))
    assert (emb_b.kind, emb_b.shape) == ("lora_B", (3, 16))
    assert all(m.shape[0] == 3 for m in tracked)
    gen = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(1, 40, (n,), generator=gen).tolist()} for n in (6, 9, 6)]
    per = PerExampleGradients(model, tracked, batch_size=2, dtype=torch.float64)
    got = {m.name: torch.cat([b[m.name] for b in per.iterate(rows)]) for m in tracked}
    for k, row in enumerate(rows):
        ref = _autograd_grads(model, row)
        for m in tracked:
            expected = ref[m.name].T if m.kind == "lora_B" else ref[m.name]
            torch.testing.assert_close(got[m.name][k], expected.double(), rtol=1e-4, atol=1e-6)


def test_head_biases_tracked_with_modules_to_save_all_are_one_row_matrices():
    """With `modules_to_save="all"` a head's bias `(d,)` is tracked as a `(1, d)` matrix, and its streamed gradient is
    the example's autograd gradient in that shape."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    from hf_ext.hyperinf import tracked_lora_parameters
    from hf_ext.hyperinf.gradients import PerExampleGradients

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3,
    )  # fmt: skip
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    model = get_peft_model(BertForSequenceClassification(cfg), lora)
    tracked = tracked_lora_parameters(model, modules_to_save="all")
    bias = next(m for m in tracked if "modules_to_save" in m.name and m.name.endswith("bias"))
    weight = next(m for m in tracked if "modules_to_save" in m.name and m.name.endswith("weight"))
    assert (bias.kind, bias.param_shape, bias.shape) == ("other", (3,), (1, 3))
    assert (weight.param_shape, weight.shape) == ((3, 16), (3, 16))
    rows = [{"input_ids": [2, 5, 7, 9, 3], "labels": 1}, {"input_ids": [2, 8, 8, 3, 4], "labels": 2}]
    per = PerExampleGradients(model, tracked, batch_size=2, dtype=torch.float64)
    (got,) = list(per.iterate(rows))
    model.eval()
    for k, row in enumerate(rows):
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        params = dict(model.named_parameters())
        (g,) = torch.autograd.grad(out.loss, [params[bias.name]])
        torch.testing.assert_close(got[bias.name][k], g.reshape(1, 3).double(), rtol=1e-4, atol=1e-6)
