"""Audit pass 38 (lo45): a pretrain resume with `--intermediate_size 384` after the flag was left unset (384 is what
unset means) was refused as another model; other widths are still refused."""

import pytest

from hf_ext.recipes import pretrain
from hf_ext.recipes._common import write_run_record

NAME = pretrain.RUN_RECORD_NAME


def _args(**model):
    return pretrain.ModelArguments(**model), pretrain.DataArguments()


@pytest.mark.parametrize("model_type", ["fog", "llama", "gpt2"])
@pytest.mark.parametrize(("first", "again"), [(None, pretrain.DEFAULT_INTERMEDIATE_SIZE), (384, None)])
def test_unset_intermediate_size_resumes_as_the_default(tmp_path, model_type, first, again):
    write_run_record(str(tmp_path), NAME, pretrain._run_record(*_args(model_type=model_type, intermediate_size=first)))
    pretrain.check_resume_run_record(str(tmp_path), *_args(model_type=model_type, intermediate_size=again))


@pytest.mark.parametrize(("first", "again"), [(None, 256), (256, None), (256, 384)])
def test_other_widths_are_still_refused(tmp_path, first, again):
    write_run_record(str(tmp_path), NAME, pretrain._run_record(*_args(intermediate_size=first)))
    shown = {None: "none"}  # how the message spells an unset flag
    expected = rf"--intermediate_size {shown.get(again, again)} \(the interrupted run used {shown.get(first, first)}\)"
    with pytest.raises(ValueError, match=expected):
        pretrain.check_resume_run_record(str(tmp_path), *_args(intermediate_size=again))
