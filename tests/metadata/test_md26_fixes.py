"""Fixes of the rv26 audit on the metadata side.

1. (F5) A fast BPE without byte fallback whose pad or EOS token is its `<unk>` (the common
   `tokenizer.pad_token = tokenizer.unk_token`) was refused with "use a tokenizer that supports split_special_tokens
   (any fast tokenizer does)": wrong advice for a fast tokenizer. The cause is that an unknown character gives `<unk>`,
   whose id is also the pad/EOS id; the message now says so and names the fix.
"""

import re

import pytest

from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END, MetadataEncoder, add_context_tokens

from .test_md25_fixes import _unk_tokenizer

# ---------------------------------------------------------------------------------------------------------------------
# 1. <unk> that is also the pad / EOS token: the refusal names the cause and the fix


@pytest.mark.parametrize("layout", ["context", "meco"])
@pytest.mark.parametrize("role", ["pad", "eos"])
def test_unk_shared_with_pad_or_eos_is_refused_with_advice_that_applies(layout, role):
    tok = _unk_tokenizer(**{f"{role}_token": "<unk>"})
    assert tok.is_fast and getattr(tok, f"{role}_token_id") == tok.unk_token_id
    add_context_tokens(tok)
    with pytest.raises(ValueError) as err:
        MetadataEncoder(tok, layout=layout)
    message = str(err.value)
    assert f"as its unk token '<unk>', id {tok.unk_token_id}, which is also its {role} token" in message
    assert f"its own {role} token (not `tokenizer.{role}_token = tokenizer.unk_token`)" in message
    assert re.search(r"characters it does not know \(here '[^']*<[^']*', from special-token strings", message)
    assert "byte fallback" in message
    assert "any fast tokenizer does" not in message  # the old advice: this tokenizer is a fast one
    # following the advice: its own pad / EOS token
    fixed = _unk_tokenizer()
    add_context_tokens(fixed)
    MetadataEncoder(fixed, layout=layout)


def test_other_forged_control_tokens_keep_the_split_special_tokens_advice():
    """Markers added as ordinary tokens are not split by split_special_tokens: that refusal is unchanged, also when
    <unk> is the pad token as well (the markers, not only <unk>, leak)."""
    tok = _unk_tokenizer(pad_token="<unk>")
    tok.add_tokens([CONTEXT_BEGIN, CONTEXT_END])
    with pytest.raises(ValueError, match="use a tokenizer that supports split_special_tokens"):
        MetadataEncoder(tok)
