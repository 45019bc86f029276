"""rv34: regressions of the pass-32 flag refusals on valid runs."""

import pytest
from grape_synthetic import parse_grape_recipe as _parse

TINY = ["--vocab_size", "300", "--per_device_train_batch_size", "4", "--hidden_size", "32", "--intermediate_size",
        "64", "--num_attention_heads", "2", "--max_steps", "2", "--report_to", "none"]  # fmt: skip


@pytest.mark.parametrize("mini, batch", [("32", "32"), ("12", "24")])
def test_doremi_mini_batch_the_default_batch_is_no_multiple_of(tmp_path, mini, batch):
    """doremi reads --reweight_mini_batch_size; one that does not divide the default --reweight_batch_size needs
    --reweight_batch_size beside it (the config's multiple rule), which must not be refused as unread."""
    from hf_ext.recipes.grape import validate_args

    argv = ["--compare_methods", "uniform,doremi", "--reweight_mini_batch_size", mini, "--reweight_batch_size", batch]
    validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))


def test_doremi_batch_size_with_a_dividing_mini_batch_still_refused(tmp_path):
    from hf_ext.recipes.grape import validate_args

    argv = ["--compare_methods", "uniform,doremi", "--reweight_batch_size", "32"]
    with pytest.raises(ValueError, match="--reweight_batch_size is read only by"):
        validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))
