"""The federated recipe: argument validation happens before anything is written."""

import os

import pytest

from hf_ext.recipes.federated import main, parse_configs, parse_replication


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


def test_replication_fractions_must_sum_to_one():
    """rs23: --replication is documented as the fractions of the canaries per replication count; a sum other than 1
    was rescaled silently by make_canaries (10:0.5,1:0.7 trained 42% ten times and 58% once)."""
    assert parse_replication("10:0.3,1:0.7") == {10: 0.3, 1: 0.7}
    assert parse_replication("3:0.1,2:0.2,1:0.7") == {3: 0.1, 2: 0.2, 1: 0.7}  # float rounding of the sum is fine
    assert parse_replication("2:1.0") == {2: 1.0}
    for text, total in (("10:0.5,1:0.7", "1.2"), ("10:0.3", "0.3"), ("10:0,1:0", "0")):
        with pytest.raises(ValueError, match=rf"--replication fractions must sum to 1 .*, got {total} from '{text}'"):
            parse_replication(text)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--configs", "lora+nope"], "unknown defenses"),
        (["--replication", "ten"], "replication"),
        # rs23: fractions not summing to 1 were rescaled silently (10:0.5,1:0.7 trained 42% / 58%)
        (
            ["--replication", "10:0.5,1:0.7"],
            r"--replication fractions must sum to 1 .*got 1\.2 .*10:0\.417,1:0\.583\.",
        ),
        (["--replication", "10:0.15,1:0.35"], r"--replication fractions must sum to 1 .*got 0\.5 .*10:0\.3,1:0\.7\."),
        (
            ["--replication", "10:0,1:0"],
            r"--replication fractions must sum to 1 .*got 0 .*--replication 10:0\.3,1:0\.7",
        ),
        (["--replication", "10:nan,1:0.7"], r"--replication needs counts >= 1 and fractions >= 0"),
        (["--prefix_lengths", "0,5"], "prefix_lengths"),
        (["--defense_goldfish_k", "1"], "goldfish_k"),
        (["--canary_source", "web"], "canary_source"),
        (["--num_rounds", "0"], "num_rounds"),
        (["--configs", "lora+secagg", "--secure_aggregation_max_colluders", "3"], "max_colluders 3 is too large"),
        (["--configs", "lora+secagg", "--secure_aggregation_max_colluders", "-1"], "max_colluders must be"),
    ],
)
def test_bad_arguments_fail_before_writing(tmp_path, argv, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), *argv])
    assert not os.path.exists(out)


SMALL = [
    "--num_rounds",
    "1",
    "--local_steps",
    "1",
    "--pretrain_steps",
    "1",
    "--num_canaries",
    "2",
    "--prefix_lengths",
    "5",
]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--configs", "full,lora+dp", "--defense_dp_clip_norm", "0"], "--defense_dp_clip_norm must be > 0"),
        (["--configs", "full,lora+dp", "--defense_dp_noise_multiplier", "-0.5"], "--defense_dp_noise_multiplier"),
        (["--configs", "full,lora+dp", "--defense_dp_noise_multiplier", "nan"], "--defense_dp_noise_multiplier"),
        (["--configs", "full,lora+clientdp", "--defense_client_noise_multiplier", "-1"], "--defense_client_noise"),
        (["--configs", "full,lora+clientdp", "--defense_client_clip_norm", "inf"], "--defense_client_clip_norm"),
        (["--configs", "lora+goldfish", "--defense_goldfish_context_width", "0"], "goldfish_context_width"),
        # make_canaries' message named its `num_words` argument, not the flag (bi29)
        (["--canary_words", "0"], r"--canary_words must be >= 1"),
        (["--canary_words", "-1"], r"--canary_words must be >= 1"),
    ],
)
def test_bad_defense_values_fail_before_pretraining_or_writing(tmp_path, argv, match):
    """Late configs' defense values are checked up front: no pretraining, no earlier run, nothing written."""
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), *SMALL, *argv])
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--setting", "central"], "--setting must be one of"),
        (["--setting", "centralized", "--configs", "full,lora+secagg"], "one client"),
        (["--setting", "both", "--configs", "lora+clientdp"], "one client"),
    ],
)
def test_bad_setting_fails_before_writing(tmp_path, argv, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), *argv])
    assert not os.path.exists(out)


def test_centralized_setting_smoke(tmp_path):
    """--setting both: the centralized runs train one client holding every federated client's blocks and canary
    copies for the same number of optimizer steps, and are reported next to the federated runs."""
    out = tmp_path / "out"
    tiny = ["--hidden_size", "16", "--intermediate_size", "32", "--num_attention_heads", "2"]
    res = main(
        ["--output_dir", str(out), "--setting", "both", "--configs", "full,lora", "--num_rounds", "1"]
        + ["--local_steps", "2", "--pretrain_steps", "0", "--num_canaries", "2", "--replication", "2:1.0"]
        + ["--prefix_lengths", "5", "--max_eval_blocks", "2", "--num_clients", "2", "--block_size", "32"]
        + ["--window", "19"]
        + ["--vocab_size", "300", "--torch_threads", "1", "--num_hidden_layers", "1", *tiny]
    )
    runs = res["runs"]
    assert list(runs) == ["full", "lora", "centralized/full", "centralized/lora"]
    fed, cen = runs["full"], runs["centralized/full"]
    assert (fed["setting"], fed["num_clients"], cen["setting"], cen["num_clients"]) == (
        "federated",
        2,
        "centralized",
        1,
    )
    assert cen["client_sizes"] == [sum(fed["client_sizes"])] and fed["client_sizes"] == res["client_sizes"]
    assert cen["optimizer_steps"] == fed["optimizer_steps"] == 4
    for run in runs.values():
        assert [h["round"] for h in run["history"]] == [0, 1]
        assert "exposure_2x" in run["history"][-1]
    table = (out / "memorization_table.md").read_text()
    assert "| centralized/lora | centralized | 1 | 4 |" in table and "exposure_2x gain" in table
    assert os.path.getsize(out / "memorization_vs_rounds.png") > 0
