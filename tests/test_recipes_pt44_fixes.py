"""A resume is checked against the run record of the interrupted run (`check_run_record`). A recorded value spelled
another way was refused as another run: `--config_overrides "b=2,a=1"` (or `"a=1, b=2"`, `"a=0.010"`) after
`"a=1,b=2"`, an empty `--config_overrides ""` after none, and `--num_key_value_heads` equal to the heads after the
default (None: one KV head per attention head). Those are the same model; other values are still refused."""

import pytest

from hf_ext.recipes import pretrain
from hf_ext.recipes._common import check_run_record, write_run_record

NAME = pretrain.RUN_RECORD_NAME


def _record(**model):
    return pretrain._run_record(pretrain.ModelArguments(**model), pretrain.DataArguments())


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("initializer_range=0.01,rms_norm_eps=1e-5", "rms_norm_eps=1e-5,initializer_range=0.01"),
        ("initializer_range=0.01,rms_norm_eps=1e-5", "initializer_range=0.01, rms_norm_eps=1e-5"),
        ("initializer_range=0.01,rms_norm_eps=1e-5", "initializer_range=0.010,rms_norm_eps=0.00001"),
        (None, ""),
        ("", None),
    ],
)
def test_same_config_overrides_spelled_otherwise_resume(tmp_path, first, again):
    write_run_record(str(tmp_path), NAME, _record(config_overrides=first))
    check_run_record(str(tmp_path), NAME, _record(config_overrides=again), "the data and model")


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("initializer_range=0.01,rms_norm_eps=1e-5", "initializer_range=0.02,rms_norm_eps=1e-5"),
        ("initializer_range=0.01,rms_norm_eps=1e-5", "initializer_range=0.01"),
        (None, "initializer_range=0.01"),
    ],
)
def test_other_config_overrides_still_refused(tmp_path, first, again):
    write_run_record(str(tmp_path), NAME, _record(config_overrides=first))
    with pytest.raises(ValueError, match="--config_overrides"):
        check_run_record(str(tmp_path), NAME, _record(config_overrides=again), "the data and model")


def test_key_value_heads_default_is_one_per_head(tmp_path):
    write_run_record(str(tmp_path), NAME, _record(num_attention_heads=4))
    check_run_record(str(tmp_path), NAME, _record(num_attention_heads=4, num_key_value_heads=4), "the data and model")
    with pytest.raises(ValueError, match="--num_key_value_heads 2"):
        check_run_record(
            str(tmp_path), NAME, _record(num_attention_heads=4, num_key_value_heads=2), "the data and model"
        )
    write_run_record(str(tmp_path), NAME, _record(num_attention_heads=4, num_key_value_heads=4))
    check_run_record(str(tmp_path), NAME, _record(num_attention_heads=4), "the data and model")
