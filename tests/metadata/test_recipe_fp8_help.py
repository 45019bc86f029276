"""metadata_pretrain's --help does not offer pretrain's FP8 flags, which it inherits with pretrain's ModelArguments but
never uses: it listed all six with pretrain's help and "(default: torchao)" while refusing every one of them (even
`--fp8_backend none`, what the recipe does). They are hidden and still refused by name."""

from __future__ import annotations

import contextlib
import io

import pytest

from hf_ext.recipes import metadata_pretrain
from hf_ext.recipes.metadata_pretrain import FP8_FLAGS


class _PastValidation(RuntimeError):
    pass


def test_help_lists_no_fp8_flag():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        metadata_pretrain.main(["--help"])
    text = buf.getvalue()
    assert "--output_dir" in text and "--model_type" in text
    for name in FP8_FLAGS:
        assert f"--{name}" not in text and f"--{name.replace('_', '-')}" not in text, name
    assert "torchao" not in text and "Transformer Engine" not in text


@pytest.mark.parametrize(
    "extra, refused",
    [
        (["--fp8_backend", "torchao"], "--fp8_backend"),
        (["--fp8_backend", "emulated"], "--fp8_backend"),
        (["--fp8_recipe", "rowwise"], "--fp8_recipe"),
        (["--fp8_attention", "true"], "--fp8_attention"),
        (["--fp8_monitor_steps", "25"], "--fp8_monitor_steps"),
        (["--fp8_monitor_action", "stop"], "--fp8_monitor_action"),
        (["--fp8_backend", "none"], None),  # what the recipe does: accepted
        (["--fp8_monitor_steps", "0"], None),
    ],
)
def test_fp8_flags_are_still_refused_by_name(tmp_path, monkeypatch, extra, refused):
    def stop(*args, **kwargs):
        raise _PastValidation("the run went past argument validation")

    monkeypatch.setattr(metadata_pretrain, "load_documents", stop)
    out = tmp_path / "never"
    expected = pytest.raises(ValueError, match=f"{refused} is an FP8 option .* without FP8") if refused else None
    with expected or pytest.raises(_PastValidation):
        metadata_pretrain.main(["--max_steps", "2", "--output_dir", str(out), *extra])
    if refused:
        assert not out.exists()
