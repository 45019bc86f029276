"""A model folder whose tokenizer is saved as the slow tokenizer's vocabulary files only (the GPT-2 release format:
`vocab.json` + `merges.txt`, resolved by `AutoTokenizer` through the folder's `config.json`) was refused by the
recipes' early check as holding "no tokenizer", though the recipes loaded and trained on it before the check existed
(rv30 F4)."""

import pytest
from transformers import AutoTokenizer, GPT2Config

from hf_ext.data import build_tokenizer
from hf_ext.recipes._common import check_model_tokenizer_files


def test_a_folder_with_vocab_json_and_merges_txt_holds_a_tokenizer(tmp_path):
    build_tokenizer(512).backend_tokenizer.model.save(str(tmp_path))  # vocab.json, merges.txt
    GPT2Config(vocab_size=512).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "merges.txt", "vocab.json"]
    assert len(AutoTokenizer.from_pretrained(tmp_path)) > 512  # what the recipe loads
    check_model_tokenizer_files(str(tmp_path), None, tokenizer_flag=True)


def test_a_folder_with_only_a_config_is_still_refused(tmp_path):
    GPT2Config(vocab_size=512).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no tokenizer"):
        check_model_tokenizer_files(str(tmp_path), None, tokenizer_flag=True)
