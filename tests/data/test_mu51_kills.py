"""Mutation-kill tests (audit pass 41, mu51) for hf_ext/data/loading.py."""

import json


def test_validation_fraction_split_is_the_datasets_split_drawn_with_the_given_seed(tmp_path):
    """Without validation data, the held-out split is `train_test_split(test_size=validation_fraction, seed=seed)` of
    the training data, so the recipes' `--validation_split_seed` names the split a user can draw again."""
    import datasets

    from hf_ext.data.loading import load_text_datasets

    rows = [{"text": f"document number {i}"} for i in range(40)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for seed in (0, 3):
        train, valid = load_text_datasets(train_file=str(path), validation_fraction=0.25, seed=seed)
        want = datasets.Dataset.from_list(rows).train_test_split(test_size=0.25, seed=seed)
        assert valid["text"] == want["test"]["text"]
        assert train["text"] == want["train"]["text"]
