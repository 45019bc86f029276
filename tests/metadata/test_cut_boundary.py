"""The max_metadata_tokens cut ends on a character boundary also when the metadata itself holds a U+FFFD."""

import pytest

from hf_ext.data import build_tokenizer
from hf_ext.metadata import add_context_tokens
from hf_ext.metadata.encoding import MetadataEncoder

BASE = "https://ja.wikipedia.org/wiki/東京都の歴史と文化についての概要と詳細な説明ページ"


@pytest.fixture(scope="module")
def tok():
    tokenizer = build_tokenizer(512)
    add_context_tokens(tokenizer)
    return tokenizer


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("meta", [BASE + "\ufffd", "\ufffd" + BASE, BASE[:30] + "\ufffd" + BASE[30:]])
@pytest.mark.parametrize("layout", ["context", "meco"])
def test_a_u_fffd_in_the_metadata_does_not_let_the_cut_split_a_character(tok, meta, layout):
    split = 0
    for limit in range(8, 45):
        enc = MetadataEncoder(tok, layout=layout, max_metadata_tokens=limit)
        ids = enc.prefix_ids([meta])[0]
        ids = ids[2:-1] if layout == "context" else ids[1:]
        text = _decode(tok, ids)
        if layout == "context":
            assert meta.startswith(text), (limit, text[-8:])
        else:  # the meco head, cut, then the closing separator
            head = enc.meco_prefix.format(metadata=meta)
            tail = _decode(tok, enc._meco_tail_ids)
            assert text.endswith(tail) and head.startswith(text[: len(text) - len(tail)]), (limit, text[-8:])
        split += tok(text, add_special_tokens=False)["input_ids"] != ids
    assert split == 0


def test_a_cut_inside_a_u_fffd_the_metadata_holds_steps_back(tok):
    enc = MetadataEncoder(tok, layout="context", max_metadata_tokens=1)
    for n in range(1, 12):
        meta = "a" * n + "\ufffd" * 3 + "b"
        full = enc._tokens([meta])[0]
        for limit in range(1, len(full)):
            cut = enc._cut(full, limit)
            assert meta.startswith(_decode(tok, cut)), (n, limit)
            assert (_decode(tok, cut) + _decode(tok, full[len(cut) :])) == meta
