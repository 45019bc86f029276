"""metadata_pretrain takes pretrain's `--config_overrides` (its model arguments are pretrain's) but did not run
pretrain's checks of it: a mistyped key (`initializer_rnge=0.5`) was stored as an unused config attribute and the run
trained with the default, and a position table shorter than `--block_size` or a repeated key went through. The
recipe's `validate_args` now runs `check_config_overrides`, before any work."""

import pytest

from hf_ext.recipes import metadata_pretrain as mp
from hf_ext.recipes._common import parse_recipe_args

TYPES = (mp.MetadataModelArguments, mp.MetadataDataArguments, mp.MetadataArguments, mp.MetadataTrainingArguments)


def _validate(tmp_path, overrides):
    argv = ["--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--config_overrides", overrides]
    mp.validate_args(*parse_recipe_args(TYPES, argv))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ("initializer_rnge=0.5", "sets 'initializer_rnge', which a fog config does not have"),
        ("max_position_embeddings=8", "fewer positions than a --block_size"),
        ("initializer_range=0.01,initializer_range=0.5", "sets 'initializer_range' twice"),
    ],
)
def test_config_overrides_are_checked(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _validate(tmp_path, overrides)
    assert not (tmp_path / "out").exists()


def test_a_valid_override_still_passes(tmp_path):
    _validate(tmp_path, "initializer_range=0.01")
