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


def test_one_above_the_largest_synthetic_vocab_size_is_refused(tmp_path):
    """2097154 // 2 = 2**20 + 1 tokens: one too many (mu32: pins the bound of the check)."""
    with pytest.raises(ValueError, match=r"^--vocab_size 2097154: .* 1048577 tokens"):
        main(["--dataset", "synthetic", "--vocab_size", "2097154", "--output_dir", str(tmp_path / "never")])


def test_a_loaded_tokenizer_is_refused_for_vocab_size_not_for_its_synthetic_bound(tmp_path, small_tokenizer):
    """With --tokenizer_name the synthetic data is tokenized by the loaded tokenizer: --vocab_size builds nothing, so
    it is refused as ignored, not by the synthetic tokenizer's bound (mu32)."""
    small_tokenizer.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"^--vocab_size sizes the tokenizer built on the fly.*would be ignored"):
        main(["--dataset", "synthetic", "--vocab_size", "3000000", "--tokenizer_name", str(tmp_path / "tok"),
              "--output_dir", str(tmp_path / "out")])  # fmt: skip
