"""Tokenizer cache: a cache folder that lost its `tokenizer_config.json` (a partial copy or clean-up of the cache) was
loaded as a tokenizer without BOS / EOS / PAD and returned by `build_tokenizer`, whose contract is those three tokens;
pretrain then refused it for a missing EOS naming `add_eos`, a flag it does not have. Such a cache is now found
unusable and rebuilt, as a truncated one is."""

from __future__ import annotations


def test_cache_without_its_config_is_rebuilt(tmp_path, monkeypatch, caplog):
    from hf_ext.data import tokenizer as tokenizer_module

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    first = tokenizer_module.build_tokenizer(vocab_size=300)
    [folder] = (tmp_path / "tokenizers").glob("bpe-300-*")
    (folder / "tokenizer_config.json").unlink()
    with caplog.at_level("WARNING"):
        again = tokenizer_module.build_tokenizer(vocab_size=300)
    assert (again.bos_token, again.eos_token, again.pad_token) == ("<|bos|>", "<|eos|>", "<|pad|>")  # before: None
    assert again.eos_token_id == first.eos_token_id
    assert again.get_vocab() == first.get_vocab()
    assert "unusable" in caplog.text
    assert (folder / "tokenizer_config.json").is_file()  # the cache is whole again
    cached = tokenizer_module.build_tokenizer(vocab_size=300)
    assert cached.eos_token == "<|eos|>"


def test_published_cache_without_special_tokens_is_not_used(tmp_path):
    from hf_ext.data import tokenizer as tokenizer_module

    tok = tokenizer_module.build_tokenizer(vocab_size=300, cache=False)
    tok.save_pretrained(str(tmp_path))
    assert tokenizer_module._load_published(tmp_path).eos_token == "<|eos|>"
    (tmp_path / "tokenizer_config.json").unlink()
    assert tokenizer_module._load_published(tmp_path) is None


def _saved(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["one two three"] * 20}),
            "test": datasets.Dataset.from_dict({"text": ["four five"] * 3}),
        }
    ).save_to_disk(str(folder))
    return folder


def test_a_damaged_save_to_disk_folder_is_refused_naming_the_flag(tmp_path):
    """A save_to_disk folder with a damaged `.arrow` file or `dataset_dict.json` failed with pyarrow's bare
    `ArrowInvalid` ("Expected to read 1802401130 metadata bytes") or a bare `JSONDecodeError`, naming neither the
    flag nor the folder."""
    import pytest

    from hf_ext.data.loading import load_dataset_or_folder, load_text_datasets

    folder = _saved(tmp_path)
    train, valid = load_text_datasets(str(folder))
    assert (len(train), len(valid)) == (20, 3)
    [arrow] = (folder / "train").glob("*.arrow")
    arrow.write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"--dataset_name='.*saved' is a save_to_disk folder that could not be read"):
        load_text_datasets(str(folder))
    (folder / "dataset_dict.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=r"--source='.*saved' is a save_to_disk folder that could not be read"):
        load_dataset_or_folder(str(folder), flag="--source")


def test_pack_dataset_arguments(tmp_path, monkeypatch):
    """`pack_dataset` refused a numpy integer `block_size` ("must be a positive int, got np.int64(8)") though
    hf_ext takes numpy integers elsewhere; `num_proc=1.5` failed inside `Dataset.map` with a bare TypeError and a
    `tokenizer=None` with an AttributeError, neither naming the argument."""
    import datasets
    import numpy as np
    import pytest

    from hf_ext.data import build_tokenizer, pack_dataset

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    tok = build_tokenizer(vocab_size=300)
    ds = datasets.Dataset.from_dict({"text": ["hello world " * 20] * 5})
    plain = pack_dataset(ds, tok, 8)
    assert pack_dataset(ds, tok, np.int64(8))["input_ids"] == plain["input_ids"]
    assert pack_dataset(ds, tok, 8, num_proc=np.int64(1))["input_ids"] == plain["input_ids"]
    for bad in (1.5, -1, "2"):
        with pytest.raises(ValueError, match="num_proc must be None or"):
            pack_dataset(ds, tok, 8, num_proc=bad)
    with pytest.raises(TypeError, match="tokenizer must be a transformers tokenizer"):
        pack_dataset(ds, None, 8)
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        pack_dataset(ds, tok, np.float64(8.0))
