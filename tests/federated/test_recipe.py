"""The federated recipe: argument validation happens before anything is written."""

import os

import pytest

from hf_ext.recipes.federated import main, parse_configs


def test_parse_configs():
    assert parse_configs("full,lora+goldfish+dp") == [
        ("full", "full", set()),
        ("lora+goldfish+dp", "lora", {"goldfish", "dp"}),
    ]
    with pytest.raises(ValueError, match="base must be"):
        parse_configs("adapter")
    with pytest.raises(ValueError, match="unknown defenses"):
        parse_configs("lora+magic")
    with pytest.raises(ValueError, match="lora base"):
        parse_configs("full+dp")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--configs", "lora+nope"], "unknown defenses"),
        (["--replication", "ten"], "replication"),
        (["--prefix_lengths", "0,5"], "prefix_lengths"),
        (["--defense_goldfish_k", "1"], "goldfish_k"),
        (["--canary_source", "web"], "canary_source"),
        (["--num_rounds", "0"], "num_rounds"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, argv, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), *argv])
    assert not os.path.exists(out)
