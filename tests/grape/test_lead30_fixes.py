"""Pass-30 fixes in GRAPE's configuration.

`export_mixture_file` / `plot_file` are joined with each run's `output_dir` (one per method when the recipe compares
methods): an absolute path, or one leaving that folder, made every run write the same file, each overwriting the one
before, and an unwritable absolute folder failed only once training had finished.
"""

import pytest

from hf_ext.grape import GrapeConfig


@pytest.mark.parametrize("name", ["export_mixture_file", "plot_file"])
@pytest.mark.parametrize("value", ["/abs/mix.json", "../mix.json", "a/../../mix.json"])
def test_output_names_outside_output_dir_are_refused(tmp_path, name, value):
    value = value.replace("mix.json", "mix.png") if name == "plot_file" else value
    with pytest.raises(ValueError, match=f"{name}='{value}' must be a file name relative to output_dir"):
        GrapeConfig(output_dir=str(tmp_path), report_to="none", **{name: value})


@pytest.mark.parametrize("value", ["mix.json", "./mix.json", "weights/mix.json", "..weights/mix.json"])
def test_output_names_inside_output_dir_are_accepted(tmp_path, value):
    args = GrapeConfig(output_dir=str(tmp_path), report_to="none", export_mixture_file=value)
    assert args.export_mixture_file == value
