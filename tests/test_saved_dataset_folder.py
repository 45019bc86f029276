"""A `save_to_disk` folder (e.g. the compliance recipe's `--save_filtered` output, `compliant_dataset/`) as
`--dataset_name` of the training recipes, and a folder of data files as the compliance recipe's `--dataset_name`.

`datasets.load_dataset` refuses a `save_to_disk` folder ("use load_from_disk instead"), so every training recipe
crashed on the compliance recipe's own output; the compliance recipe read every folder with `load_from_disk`, so a
folder of .jsonl files (which `load_dataset` reads) failed there.
"""

import json
import math

import pytest
from datasets import Dataset, DatasetDict

from hf_ext.data import load_text_datasets
from hf_ext.recipes.compliance import ComplianceArguments, _load_dataset
from hf_ext.recipes.grape import GrapeDataArguments, GrapeRecipeConfig, _load_sources

DOCS = [{"text": f"document number {i} " * 8, "url": f"https://site{i % 3}.example/{i}", "domain": f"d{i % 2}"}
        for i in range(40)]  # fmt: skip


def test_a_saved_dataset_is_the_training_data_and_its_split_the_validation(tmp_path):
    Dataset.from_list(DOCS).save_to_disk(str(tmp_path / "one"))
    train, valid = load_text_datasets(dataset_name=str(tmp_path / "one"))
    assert sorted(list(train["text"]) + list(valid["text"])) == sorted(d["text"] for d in DOCS)
    assert len(valid) == 2 and not set(train["text"]) & set(valid["text"])
    # the held-out split is drawn with the validation split seed, as for --train_file
    _, again = load_text_datasets(dataset_name=str(tmp_path / "one"), seed=0)
    assert list(again["text"]) == list(valid["text"])


def test_a_saved_dataset_dict_keeps_its_own_splits(tmp_path):
    DatasetDict({"train": Dataset.from_list(DOCS[:30]), "validation": Dataset.from_list(DOCS[30:])}).save_to_disk(
        str(tmp_path / "dict")
    )
    train, valid = load_text_datasets(dataset_name=str(tmp_path / "dict"))
    assert list(train["text"]) == [d["text"] for d in DOCS[:30]]
    assert list(valid["text"]) == [d["text"] for d in DOCS[30:]]
    DatasetDict({"test": Dataset.from_list(DOCS)}).save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match="--dataset_name.*no 'train' split"):
        load_text_datasets(dataset_name=str(tmp_path / "no_train"))


def test_a_config_name_for_a_saved_folder_is_refused(tmp_path):
    Dataset.from_list(DOCS).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ValueError, match="save_to_disk folder.*--dataset_config_name"):
        load_text_datasets(dataset_name=str(tmp_path / "one"), dataset_config_name="en")


def test_grape_reads_a_saved_folder_as_its_sources(tmp_path):
    Dataset.from_list(DOCS).save_to_disk(str(tmp_path / "one"))
    sources = _load_sources(GrapeDataArguments(dataset_name=str(tmp_path / "one")), GrapeRecipeConfig())
    assert list(sources["text"]) == [d["text"] for d in DOCS]
    assert list(sources["domain"]) == [d["domain"] for d in DOCS]


def test_the_compliance_recipe_reads_a_folder_of_data_files_and_a_saved_folder(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    for part in range(2):
        rows = DOCS[part * 20 : (part + 1) * 20]
        (files / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = _load_dataset(ComplianceArguments(dataset_name=str(files)))
    assert sorted(loaded["url"]) == sorted(d["url"] for d in DOCS)
    Dataset.from_list(DOCS).save_to_disk(str(tmp_path / "one"))
    saved = _load_dataset(ComplianceArguments(dataset_name=str(tmp_path / "one")))
    assert list(saved["url"]) == [d["url"] for d in DOCS]


def test_the_pretrain_recipe_trains_on_a_saved_folder(tmp_path):
    from hf_ext.recipes.pretrain import main

    Dataset.from_list(DOCS * 3).save_to_disk(str(tmp_path / "one"))
    flags = ("--hidden_size 32 --intermediate_size 64 --num_hidden_layers 1 --num_attention_heads 2 --block_size 32 "
             "--per_device_train_batch_size 4 --max_eval_blocks 4 --max_new_tokens 4 --model_type llama "
             "--max_steps 1 --vocab_size 300").split()  # fmt: skip
    results = main([*flags, "--dataset_name", str(tmp_path / "one"), "--output_dir", str(tmp_path / "out")])
    assert math.isfinite(results["eval_loss"]) and (tmp_path / "out" / "model.safetensors").is_file()
