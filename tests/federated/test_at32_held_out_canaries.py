"""at32 F1: the recipe's test-document canaries and exposure references must not be training-split text."""

from hf_ext.data import load_corpus
from hf_ext.recipes.federated import DataArguments, held_out_texts, reference_texts

WIDTH = 13


def _train_runs():
    runs = set()
    for text in load_corpus("train")["text"]:
        words = text.split()
        runs.update(tuple(words[i : i + WIDTH]) for i in range(len(words) - WIDTH + 1))
    return runs


def test_test_doc_canaries_and_references_share_no_run_of_words_with_the_training_split():
    args = DataArguments()
    runs = _train_runs()
    docs = held_out_texts(args)
    assert len(docs) > args.num_canaries  # the default run still has canaries and an exposure baseline
    bodies = [" ".join(d.split()[: args.canary_words]) for d in docs]
    # the embedded test split's first document is a near copy of a training document: it used to be canary 0
    first = load_corpus("test")["text"][0]
    assert " ".join(first.split()[: args.canary_words]) not in bodies
    for body in bodies + [r.split(": ", 1)[1] for r in reference_texts(args, ["unused", "words"], 0)]:
        words = body.split()
        shared = [words[i : i + WIDTH] for i in range(len(words) - WIDTH + 1) if tuple(words[i : i + WIDTH]) in runs]
        assert not shared, f"held-out text shares {' '.join(shared[0])!r} with the training split"
