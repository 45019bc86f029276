"""Data loading fixes of audit pass 35 (da41)."""

from __future__ import annotations

import json

import pytest

from hf_ext.data.loading import load_text_datasets


def _folder(path, splits):
    path.mkdir()
    for split in splits:
        with open(path / f"{split}.jsonl", "w") as fh:
            for i in range(20):
                fh.write(json.dumps({"text": f"{split} document {i}"}) + "\n")
    return str(path)


def test_validation_split_seed_with_the_datasets_own_validation_split_is_refused(tmp_path):
    """A --dataset_name with its own validation split is evaluated on that split: a --validation_split_seed 3 was
    accepted and silently ignored (the same documents as seed 0). Now refused naming the flag and the split."""
    folder = _folder(tmp_path / "d", ["train", "validation"])
    train, valid = load_text_datasets(dataset_name=folder, seed=0)
    assert len(train) == 20 and set(valid["text"]) == {f"validation document {i}" for i in range(20)}
    with pytest.raises(ValueError, match=r"--validation_split_seed 3 is ignored: .* its own 'validation' split"):
        load_text_datasets(dataset_name=folder, seed=3)
    # a dataset with a train split only: the seed draws the held-out split (accepted, and it matters)
    only_train = _folder(tmp_path / "t", ["train"])
    held_out = {seed: sorted(load_text_datasets(dataset_name=only_train, seed=seed)[1]["text"]) for seed in (0, 3)}
    assert held_out[0] != held_out[3]


def test_pretrain_refuses_the_ignored_seed_before_touching_results(tmp_path):
    from hf_ext.recipes.pretrain import main

    folder = _folder(tmp_path / "d", ["train", "test"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "pretrain_results.json").write_text("{}")
    args = ["--dataset_name", folder, "--validation_split_seed", "3", "--model_type", "llama", "--hidden_size", "32",
            "--num_attention_heads", "2", "--num_hidden_layers", "1", "--vocab_size", "512", "--block_size", "16",
            "--fp8_backend", "none", "--max_steps", "1", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(ValueError, match=r"--validation_split_seed 3 is ignored: .* its own 'test' split"):
        main(args)
    assert (out / "pretrain_results.json").read_text() == "{}"
