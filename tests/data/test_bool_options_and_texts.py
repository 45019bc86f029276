"""On/off options of the data helpers and `build_tokenizer(texts=...)`.

`pack_dataset(add_eos="false")` still put EOS between documents, `drop_remainder="false"` still dropped the last
partial block and `build_tokenizer(cache="no")` still wrote the cache: any truthy value meant True. A bare string as
`texts` was trained on as one document per character (no merge learned), `texts=[]` gave an untrained tokenizer and
`[None, "a"]` failed with "'NoneType' object is not iterable", naming no argument."""

import datasets
import numpy as np
import pytest

from hf_ext.data import build_tokenizer, pack_dataset


@pytest.fixture(scope="module")
def docs():
    return datasets.Dataset.from_dict({"text": ["hello world " * 20, "foo bar " * 30]})


@pytest.mark.parametrize("name", ["add_eos", "drop_remainder"])
@pytest.mark.parametrize("bad", ["false", "true", 0, 1, None])
def test_pack_dataset_refuses_a_non_bool_switch(small_tokenizer, docs, name, bad):
    with pytest.raises(TypeError, match=f"{name} must be True or False, got {bad!r}"):
        pack_dataset(docs, small_tokenizer, block_size=16, **{name: bad})


def test_pack_dataset_switches_still_work(small_tokenizer, docs):
    eos = small_tokenizer.eos_token_id
    with_eos = pack_dataset(docs, small_tokenizer, block_size=16, add_eos=np.bool_(True), drop_remainder=False)
    without = pack_dataset(docs, small_tokenizer, block_size=16, add_eos=False, drop_remainder=False)
    assert sum(r.count(eos) for r in with_eos["input_ids"]) == 2
    assert sum(r.count(eos) for r in without["input_ids"]) == 0
    assert len(with_eos["input_ids"][-1]) < 16  # the partial block is kept
    assert all(len(r) == 16 for r in pack_dataset(docs, small_tokenizer, block_size=16)["input_ids"])


@pytest.mark.parametrize("bad", ["no", "false", 0, None])
def test_build_tokenizer_refuses_a_non_bool_cache_before_writing(tmp_path, monkeypatch, bad):
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    with pytest.raises(TypeError, match=f"cache must be True or False, got {bad!r}"):
        build_tokenizer(300, cache=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("The quick brown fox", TypeError, r"texts must be a collection of documents .*single str.*pass \[text\]"),
        (b"The quick brown fox", TypeError, r"texts must be a collection of documents .*single bytes"),
        ([], ValueError, "texts is empty"),
        (iter([]), ValueError, "texts is empty"),
        ([None, "a"], TypeError, r"texts\[0\] is None of type NoneType"),
        (["a", 2], TypeError, r"texts\[1\] is 2 of type int"),
        (5, TypeError, "texts must be an iterable of strings, got int"),
    ],
)
def test_build_tokenizer_refuses_texts_it_cannot_train_on(bad, error, match):
    with pytest.raises(error, match=match):
        build_tokenizer(300, texts=bad)


def test_build_tokenizer_trains_on_a_list_or_a_generator_of_texts():
    text = "The quick brown fox jumps over the lazy dog. " * 50
    from_list = build_tokenizer(300, texts=[text])
    from_gen = build_tokenizer(300, texts=(t for t in [text]))
    assert from_list.get_vocab() == from_gen.get_vocab() and len(from_list) > 259  # merges were learned
    assert len(from_list("The quick brown fox")["input_ids"]) < len("The quick brown fox")
