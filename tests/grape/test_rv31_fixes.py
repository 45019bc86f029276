"""GRAPE's output file names (rv31 F1).

`export_mixture_file` / `plot_file` are written to `os.path.join(output_dir, value)` at the end of training. A value
naming a folder (`weights/`, `.`, `mixture.json/`) or going through a folder and back (`sub/../mixture.json`, with no
`sub` folder) passed the relative-path rule, and the run failed only once training had finished (`NotADirectoryError`,
`FileNotFoundError`), before the model was saved.
"""

import os

import pytest

from hf_ext.grape import GrapeConfig
from hf_ext.utils.io import atomic_write_text


@pytest.mark.parametrize("name", ["export_mixture_file", "plot_file"])
@pytest.mark.parametrize("value", ["weights/", ".", "./", "mix.json/", "sub/../mix.json", "a/./../mix.json"])
def test_output_names_that_are_no_file_inside_output_dir_are_refused_when_created(tmp_path, name, value):
    value = value.replace("mix.json", "mix.png") if name == "plot_file" else value
    with pytest.raises(ValueError, match=rf"{name}='{value}' must name a file inside output_dir, without '\.\.'"):
        GrapeConfig(output_dir=str(tmp_path), report_to="none", **{name: value})


@pytest.mark.parametrize("value", ["mix.json", "./mix.json", "weights/mix.json", "a//b/mix.json", "..w/mix.json"])
def test_accepted_output_names_can_be_written(tmp_path, value):
    args = GrapeConfig(output_dir=str(tmp_path), report_to="none", export_mixture_file=value)
    atomic_write_text(os.path.join(args.output_dir, args.export_mixture_file), "{}")
    assert (tmp_path / os.path.normpath(value)).read_text() == "{}"
