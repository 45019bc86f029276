"""Instruction-style data for influence-based data selection with a causal LM (the paper's LLM selection setting).

`build_instruction_task` turns the embedded corpus into short instruction/response examples, one per document, of
the chosen kinds (alternating):

* `topic`: "Topic of the text? <first tokens of the document> Answer:" -> the document's domain (`networking`, ...);
* `repeat`: "Repeat the first words: <first tokens> Answer:" -> the first `answer_tokens` tokens of the excerpt;
* `continue`: "Continue the text: <first tokens> Answer:" -> the document's next `answer_tokens` tokens.

`topic` and `repeat` answers are functions of the prompt, so a swapped answer contradicts what the other examples
teach; a swapped `continue` answer is just another plausible text for a tiny model (see docs/hyperinf.md).

The loss is on the response tokens only (prompt `labels` are -100). A share of the *training* examples is corrupted:
their responses are shuffled among themselves within each kind (a `topic` example that would get its own domain back
stays clean), so the answer no longer matches the prompt while every answer still occurs once. The target set (which defines the influence target) and the
test set are clean and come from documents that are not in the training set.
"""

from __future__ import annotations

import numpy as np
import torch

INSTRUCTIONS = {
    "topic": "Topic of the text?\n",
    "repeat": "Repeat the first words:\n",
    "continue": "Continue the text:\n",
}
ANSWER_MARK = "\nAnswer:"


def end_token_id(tokenizer) -> int:
    """The token id that ends every example: the tokenizer's `eos_token_id`, else its `sep_token_id` (BERT-family
    tokenizers have no eos token and end a sequence with `[SEP]`). A `ValueError` when it has neither (every example
    would end in `None`, which failed only when a collator made tensors of it)."""
    for attribute in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            return int(value)
    raise ValueError(
        f"The tokenizer ({type(tokenizer).__name__}) has neither an eos token nor a sep token to end each example "
        "with (eos_token_id and sep_token_id are None); set one (e.g. `tokenizer.eos_token = ...`, a token of its "
        "vocabulary) or use a base model whose tokenizer defines one."
    )


def build_instruction_task(
    tokenizer,
    domains: list[str] | None = None,
    seed: int = 0,
    prompt_tokens: int = 24,
    answer_tokens: int = 8,
    num_target: int = 40,
    num_test: int = 80,
    max_train: int = 320,
    corrupt_rate: float = 0.3,
    kinds: tuple[str, ...] = ("topic", "repeat"),
):
    """Tokenized instruction examples: `(train, target, test, is_corrupted)`.

    Every dataset has `input_ids`, `labels` (-100 on the prompt), `kind` (one of `kinds`) and `domain`;
    `train` also has `corrupted` (bool). Documents with fewer than `prompt_tokens + answer_tokens` tokens are skipped.

    Args:
        tokenizer: a tokenizer with an `eos_token_id` (e.g. `hf_ext.data.build_tokenizer(512)`) or, without one, a
            `sep_token_id` (BERT family), which ends every answer (`end_token_id`; neither is a `ValueError`).
        domains (`list[str]`, *optional*): corpus domains to use (default: all).
        seed (`int`): seed of the document split, the kinds and the corruption.
        prompt_tokens (`int`): document tokens in the prompt.
        answer_tokens (`int`): continuation tokens in a `continue` response.
        num_target, num_test, max_train (`int`): split sizes (documents).
        corrupt_rate (`float`): share of training examples whose response is swapped, in [0, 1).
        kinds (`tuple[str, ...]`): instruction kinds among `topic`, `repeat`, `continue`, assigned in turn.
    """
    from datasets import Dataset, concatenate_datasets

    from ..data import load_corpus
    from ..utils.checks import is_int

    if prompt_tokens < 1 or answer_tokens < 1:
        raise ValueError(f"`prompt_tokens` and `answer_tokens` must be >= 1, got {prompt_tokens}, {answer_tokens}.")
    for name, value in (("num_target", num_target), ("num_test", num_test), ("max_train", max_train)):
        # a negative size sliced from the end (`rows[:-5]`), a float failed in the slice with Python's message
        if not is_int(value) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1 (documents), got {value!r}.")
    kinds = tuple(kinds)
    if not kinds or any(k not in INSTRUCTIONS for k in kinds):
        raise ValueError(f"`kinds` must be a non-empty selection of {list(INSTRUCTIONS)}, got {kinds!r}.")
    if not 0.0 <= corrupt_rate < 1.0:
        raise ValueError(f"`corrupt_rate` must be in [0, 1), got {corrupt_rate}.")
    eos = end_token_id(tokenizer)
    corpus = concatenate_datasets([load_corpus("train", domains=domains), load_corpus("test", domains=domains)])
    encoded = tokenizer(list(corpus["text"]), add_special_tokens=False)["input_ids"]
    instruction_ids = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in INSTRUCTIONS.items()}
    mark_ids = tokenizer(ANSWER_MARK, add_special_tokens=False)["input_ids"]
    domain_ids = {d: tokenizer(" " + d, add_special_tokens=False)["input_ids"] for d in sorted(set(corpus["domain"]))}
    rng = np.random.default_rng(seed)
    docs = [(ids, dom) for ids, dom in zip(encoded, corpus["domain"]) if len(ids) >= prompt_tokens + answer_tokens]
    docs = [docs[i] for i in rng.permutation(len(docs))]
    rows = []
    for i, (ids, domain) in enumerate(docs):
        kind = kinds[i % len(kinds)]
        prompt = instruction_ids[kind] + ids[:prompt_tokens] + mark_ids
        if kind == "topic":
            answer = domain_ids[domain]
        elif kind == "repeat":
            answer = ids[:answer_tokens]
        else:
            answer = ids[prompt_tokens : prompt_tokens + answer_tokens]
        rows.append({"prompt": prompt, "answer": list(answer) + [eos], "kind": kind, "domain": domain})
    target, test = rows[:num_target], rows[num_target : num_target + num_test]
    train = rows[num_target + num_test :][:max_train]
    if len(train) < 20 or not target or not test:
        raise ValueError(
            f"Only {len(train)} training documents remain after {num_target} target and {num_test} test documents "
            f"(at least 20 are needed; --max_train={max_train}); raise --max_train, lower --num_val/--num_test or use "
            "more --domains."
        )
    # corruption: the answers of the chosen examples are shuffled among themselves (within each kind), so every answer
    # still occurs once; a `topic` example that would keep its own domain is left clean
    corrupted = np.zeros(len(train), dtype=bool)
    chosen = rng.choice(len(train), size=int(round(corrupt_rate * len(train))), replace=False)
    for kind in kinds:
        members = [int(i) for i in chosen if train[i]["kind"] == kind]
        if len(members) < 2:
            continue
        shift = 1 + int(rng.integers(len(members) - 1))  # a cyclic shift of a random order: nobody keeps its answer
        order = [members[i] for i in rng.permutation(len(members))]
        answers = {row: train[order[(k + shift) % len(order)]]["answer"] for k, row in enumerate(order)}
        for row, answer in answers.items():
            if answer != train[row]["answer"] and (kind != "topic" or answer != domain_ids[train[row]["domain"]]):
                train[row] = {**train[row], "answer": answer}
                corrupted[row] = True

    def to_dataset(part, flags=None):
        out = []
        for k, ex in enumerate(part):
            item = {
                "input_ids": ex["prompt"] + ex["answer"],
                "labels": [-100] * len(ex["prompt"]) + ex["answer"],
                "kind": ex["kind"],
                "domain": ex["domain"],
            }
            if flags is not None:
                item["corrupted"] = bool(flags[k])
            out.append(item)
        return Dataset.from_list(out)

    return to_dataset(train, corrupted), to_dataset(target), to_dataset(test), corrupted


@torch.no_grad()
def evaluate_response_loss(model, dataset, batch_size: int = 32, pad_token_id: int = 0) -> dict:
    """Loss and token accuracy of a causal LM on the response tokens (`labels != -100`) of `dataset`.

    Returns `{"loss": mean cross-entropy per response token, "token_accuracy": share of response tokens predicted
    exactly (greedy, teacher forced), "example_loss": mean over examples of their per-token loss}`.

    Raises:
        `ValueError`: `batch_size` is not a positive int, `dataset` is empty, or an example has no response token
            (`labels` -100 after its first token): its per-token loss is undefined (it used to count as 0 in
            `example_loss`, and a dataset of such examples failed with a ZeroDivisionError).
    """
    from ..utils.checks import is_int
    from .gradients import PaddingCollator

    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty; pass at least one example with response tokens.")
    collate = PaddingCollator(("input_ids", "labels", "attention_mask"), pad_token_id=pad_token_id)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, correct, count, per_example = 0.0, 0, 0, []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            target = labels[:, 1:]
            mask = target != -100
            empty = (~mask.any(dim=1)).nonzero().flatten()
            if empty.numel():
                raise ValueError(
                    f"example {start + int(empty[0])} of `dataset` has no response token (its `labels` are -100 after "
                    "the first token), so its per-token loss is undefined; drop it."
                )
            logits = model(**batch).logits.float()[:, :-1]
            losses = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1), reduction="none"
            ).view_as(target)
            losses = losses * mask
            total += float(losses.sum())
            correct += int(((logits.argmax(-1) == target) & mask).sum())
            count += int(mask.sum())
            per_example.extend((losses.sum(1) / mask.sum(1)).tolist())
    finally:
        model.train(was_training)
    return {"loss": total / count, "token_accuracy": correct / count, "example_loss": float(np.mean(per_example))}
