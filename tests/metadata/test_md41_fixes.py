"""Audit pass md41: regressions of the metadata recipe's argument checks."""

import pytest

from hf_ext.recipes import metadata_pretrain

from .test_recipe import TINY


class _PastValidation(RuntimeError):
    pass


def _stop_after_validation(monkeypatch):
    def stop(*args, **kwargs):
        raise _PastValidation("the run went past argument validation")

    monkeypatch.setattr(metadata_pretrain, "load_documents", stop)


@pytest.mark.parametrize("docs", ["0", "1", "-5"])
def test_too_few_synthetic_docs_are_refused_by_the_flag_name(tmp_path, monkeypatch, docs):
    """`--synthetic_docs 0` / `-5` failed with "synthetic_url_corpus: `num_docs` must be an int >= 1" and `1` with
    datasets' raw "With n_samples=1, test_size=0.1 ... the resulting train set will be empty": neither named the
    flag. Both came from loading the data; the check now runs with the other flags."""
    _stop_after_validation(monkeypatch)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--synthetic_docs must be at least 2 .* got -?\d"):
        metadata_pretrain.main(
            [*TINY, "--dataset", "synthetic", "--synthetic_docs", docs, "--max_steps", "2", "--output_dir", str(out)]
        )
    assert not out.exists()


def test_two_synthetic_docs_pass_validation(tmp_path, monkeypatch):
    """The smallest corpus that splits (one held-out, one training document) is accepted (it trains end to end)."""
    _stop_after_validation(monkeypatch)
    with pytest.raises(_PastValidation):
        metadata_pretrain.main(
            [*TINY, "--dataset", "synthetic", "--synthetic_docs", "2", "--max_steps", "2", "--output_dir",
             str(tmp_path / "out")]
        )  # fmt: skip
