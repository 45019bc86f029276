"""The held-out split a recipe draws from `--train_file` does not depend on the training `--seed`.

Runs that differ only in `--seed` (the usual way to report a mean and a spread) must be evaluated on the same
documents; the split has its own `--validation_split_seed`.
"""

import json

import pytest

import hf_ext.data


class _Stop(Exception):
    pass


def _capture(monkeypatch):
    """Replace `hf_ext.data.load_text_datasets` by a wrapper that records the split and stops the recipe."""
    real = hf_ext.data.load_text_datasets
    seen = []

    def wrapper(*args, **kwargs):
        train, valid = real(*args, **kwargs)
        seen.append((sorted(train["text"]), sorted(valid["text"])))
        raise _Stop

    monkeypatch.setattr(hf_ext.data, "load_text_datasets", wrapper)
    return seen


def _train_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(60):
            text = f"document number {i} " + " ".join(f"w{(i * 7 + j) % 50}" for j in range(40))
            f.write(json.dumps({"text": text, "url": f"https://site{i % 5}.example.org/page/{i}"}) + "\n")
    return str(path)


def _main(name):
    if name == "pretrain":
        from hf_ext.recipes.pretrain import main
    elif name == "layer_parallel":
        from hf_ext.recipes.layer_parallel import main
    elif name == "metadata_pretrain":
        from hf_ext.recipes.metadata_pretrain import main
    else:
        from hf_ext.recipes.warmup import main
    return main


@pytest.mark.parametrize("name", ["pretrain", "layer_parallel", "metadata_pretrain", "warmup"])
def test_held_out_split_is_the_same_for_every_training_seed(name, tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    main = _main(name)
    data = _train_file(tmp_path)
    for seed in ("1", "2"):
        with pytest.raises(_Stop):
            main(["--output_dir", str(tmp_path / f"out{seed}"), "--train_file", data, "--seed", seed])
    assert len(seen) == 2
    assert seen[0][1] == seen[1][1], "the held-out documents changed with --seed"
    assert seen[0][0] == seen[1][0]
    assert len(seen[0][1]) == 3  # 5% of 60 documents

    # the split's own seed does move it
    with pytest.raises(_Stop):
        main(["--output_dir", str(tmp_path / "out3"), "--train_file", data, "--validation_split_seed", "7"])
    assert seen[2][1] != seen[0][1]


def test_a_bad_split_seed_is_refused_by_name(tmp_path):
    from hf_ext.data import load_text_datasets

    data = _train_file(tmp_path)
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(ValueError, match="--validation_split_seed"):
            load_text_datasets(train_file=data, seed=bad)


@pytest.mark.parametrize("name", ["pretrain", "layer_parallel", "metadata_pretrain", "warmup"])
def test_a_bad_split_seed_flag_is_refused_before_any_work(name, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(hf_ext.data, "load_text_datasets", lambda *a, **k: loads.append(a))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="--validation_split_seed must be"):
        _main(name)(["--output_dir", str(out), "--train_file", _train_file(tmp_path), "--validation_split_seed", "-1"])
    assert loads == []  # refused while parsing, before the data is loaded
    assert (out / "results.json").read_text() == "{}"


@pytest.mark.parametrize("name", ["pretrain", "layer_parallel", "metadata_pretrain", "warmup"])
def test_split_seed_help_and_refusal_name_only_flags_the_recipe_has(name, tmp_path, capsys):
    """warmup has neither --validation_file nor --dataset_name: its --help and its refusal of an unused
    --validation_split_seed used to send the user to them (uj28 F1)."""
    import re

    main = _main(name)
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    options = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", help_text.split("options:", 1)[0]))  # the usage lines
    entry = help_text.split("--validation_split_seed VALIDATION_SPLIT_SEED, --validation-split-seed", 1)[1]
    entry = entry.split("\n  --", 1)[0]
    assert set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", entry)) <= options, entry

    with pytest.raises(ValueError, match="--validation_split_seed 3 is ignored") as err:
        main(["--output_dir", str(tmp_path / "out"), "--validation_split_seed", "3"])
    assert set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", str(err.value))) <= options, str(err.value)
