"""neuralgrok recipe: the dashed --resume-from-checkpoint alias, the five-operand task's dataset size, flags no
selected method reads, and a checkpoint beyond --max_steps, all handled before any work."""

import json

import pytest

from hf_ext.recipes import neuralgrok


def _parse(argv):
    from hf_ext.recipes._common import parse_recipe_args

    return parse_recipe_args(
        (neuralgrok.GrokTaskArguments, neuralgrok.GrokModelArguments, neuralgrok.GrokTrainingArguments), argv
    )


@pytest.mark.parametrize(
    "argv, value",
    [
        (["--resume-from-checkpoint", "x/checkpoint-20", "--p", "11"], "x/checkpoint-20"),
        (["--resume-from-checkpoint=x/checkpoint-20"], "x/checkpoint-20"),
        (["--p", "11", "--resume-from-checkpoint"], "last"),
        (["--resume-from-checkpoint", "--p", "11"], "last"),
    ],
)
def test_split_resume_flag_takes_the_dashed_alias(argv, value):
    """The alias listed in --help used to stay in argv and be overwritten with None: the run started from scratch."""
    got, rest = neuralgrok._split_resume_flag(argv)
    assert got == value
    assert not [t for t in rest if "resume" in t]


def test_main_passes_the_dashed_alias_on(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(neuralgrok, "run", lambda task, model, training, plots=True: seen.setdefault("value",
                                                                                   training.resume_from_checkpoint))  # fmt: skip
    monkeypatch.setattr(neuralgrok, "finish", lambda result=None: result, raising=False)
    neuralgrok.main(["--output_dir", str(tmp_path), "--resume-from-checkpoint", "src/none-seed0/checkpoint-20"])
    assert seen["value"] == "src/none-seed0/checkpoint-20"
    seen.clear()
    neuralgrok.main(["--output_dir", str(tmp_path), "--resume-from-checkpoint"])  # was an argparse error
    assert seen["value"] == "last"


def test_five_operand_task_at_p97_is_refused_without_building_it(monkeypatch, tmp_path):
    """--task a*c+b*d-e at the default --p 97 used to build 8.4e9 equations in validate_args (hours, ~1 TB)."""
    from hf_ext.neuralgrok import data

    def built(*args, **kwargs):
        raise AssertionError("the equations were materialised")

    monkeypatch.setattr(data, "_equations", built)
    out = tmp_path / "out"
    parsed = _parse(["--task", "a*c+b*d-e", "--output_dir", str(out)])
    with pytest.raises(ValueError, match=r"--task a\*c\+b\*d-e with --p 97 has 8,411,194,368 equations.*--p 7"):
        neuralgrok.validate_args(*parsed)
    with pytest.raises(ValueError, match="p=97 has 8,411,194,368 equations"):
        data.build_arithmetic_dataset("a*c+b*d-e", 97)
    assert not out.exists()


def test_equation_counts_match_the_built_datasets():
    from hf_ext.neuralgrok.data import MAX_EQUATIONS, build_arithmetic_dataset, num_arithmetic_equations

    for task, p in (("a+b", 97), ("a*a-b", 11), ("a*c+b*d-e", 7), ("axc+bxd-e", 5)):
        assert num_arithmetic_equations(task, p) == len(build_arithmetic_dataset(task, p))
    assert num_arithmetic_equations("a*c+b*d-e", 17) <= MAX_EQUATIONS < num_arithmetic_equations("a*c+b*d-e", 19)


@pytest.mark.parametrize(
    "methods, extra, flag",
    [
        ("none", ["--strong_weight_decay", "0.5"], "--strong_weight_decay"),
        ("none,grokfast_ema", ["--outer_fraction", "0.1"], "--outer_fraction"),
        ("none", ["--amplifier_c", "3"], "--amplifier_c"),
        ("none", ["--amplifier_clip_norm", "0"], "--amplifier_clip_norm"),
        ("normalize", ["--amplifier_hidden_dims", "8", "8"], "--amplifier_hidden_dims"),
        ("normalize", ["--meta_learning_rate", "0.01"], "--meta_learning_rate"),
        ("grokfast_ma", ["--grokfast_alpha", "0.5"], "--grokfast_alpha"),
        ("grokfast_ema", ["--grokfast_window", "5"], "--grokfast_window"),
        ("none", ["--grokfast_lamb", "3"], "--grokfast_lamb"),
    ],
)
def test_flags_no_selected_method_reads_are_refused(tmp_path, methods, extra, flag):
    """--methods none accepted --strong_weight_decay/--outer_fraction/--amplifier_c silently (and recorded
    strong_weight_decay in the results)."""
    out = tmp_path / "out"
    parsed = _parse(["--p", "11", "--methods", methods, "--seeds", "0", "--output_dir", str(out), *extra])
    with pytest.raises(ValueError, match=f"would ignore {flag} "):
        neuralgrok.validate_args(*parsed)
    assert not out.exists()


@pytest.mark.parametrize(
    "methods, extra",
    [
        ("none_strong_wd", ["--strong_weight_decay", "0.5"]),
        ("normalize", ["--outer_fraction", "0.1", "--amplifier_c", "3"]),
        ("neuralgrok", ["--amplifier_hidden_dims", "8", "8", "--outer_every", "2"]),
        ("grokfast_ma", ["--grokfast_window", "5", "--grokfast_lamb", "3"]),
    ],
)
def test_flags_a_selected_method_reads_are_accepted(tmp_path, methods, extra):
    parsed = _parse(["--p", "11", "--methods", methods, "--seeds", "0", "--output_dir", str(tmp_path), *extra])
    assert neuralgrok.validate_args(*parsed)[0] == [methods]


def test_resume_past_max_steps_is_refused(tmp_path):
    out = tmp_path / "out"
    ckpt = out / "none-seed0" / "checkpoint-50"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 50}))
    (ckpt / "neuralgrok_state.json").write_text(json.dumps({"gradient_transform": "none", "weight_decay": 1e-3}))
    for value in ([], [str(ckpt)]):
        parsed = _parse(["--p", "11", "--methods", "none", "--seeds", "0", "--max_steps", "40", "--output_dir",
                         str(out)])  # fmt: skip
        parsed[2].resume_from_checkpoint = value[0] if value else "last"
        with pytest.raises(ValueError, match="global_step 50.*--max_steps 40"):
            neuralgrok.validate_args(*parsed)
