"""Pass-30 fix in the compliance recipe: a `--split` the embedded corpus lacks was refused only when the data was
loaded, by the corpus loader's own message (`split must be 'train', 'test' or None`, no flag name), after the run's
`--output_dir` had been made."""

import pytest

from hf_ext.recipes.compliance import main


def test_unknown_split_of_the_embedded_corpus_is_refused_by_flag_before_any_output(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(
        ValueError, match=r"--split 'validation': the embedded corpus .* --split train or --split test"
    ):
        main(["--split", "validation", "--output_dir", str(out)])
    assert not out.exists()
