"""rv31 F3: `--dataset synthetic` builds its tokenizer with max(1500, --vocab_size // 2) tokens, so a --vocab_size
above 2 * 2**20 + 1 was refused (after the documents were generated) by `build_tokenizer` with
"vocab_size must be an int in [259, 1048576] ..., got 1500000": neither the flag nor the value the user passed. It is
now refused by flag, with the largest accepted value, before any data is made; the sizes that work are kept."""

import pytest

from hf_ext.recipes.metadata_pretrain import main


def test_a_synthetic_vocab_size_too_large_for_its_tokenizer_is_refused_by_flag(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"^--vocab_size 3000000: .*pass --vocab_size <= 2097153\."):
        main(["--dataset", "synthetic", "--vocab_size", "3000000", "--output_dir", str(out)])
    assert not out.exists()


def test_the_largest_synthetic_vocab_size_passes_the_check(tmp_path, monkeypatch):
    import hf_ext.recipes.metadata_pretrain as recipe

    def stop(*args, **kwargs):
        raise RuntimeError("validated")

    monkeypatch.setattr(recipe, "load_documents", stop)
    with pytest.raises(RuntimeError, match="validated"):
        main(["--dataset", "synthetic", "--vocab_size", "2097153", "--output_dir", str(tmp_path / "out")])
