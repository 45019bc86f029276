"""The federated recipe as a user runs it: flags it would ignore are refused by name, bad inputs fail before
`--output_dir` exists, an earlier run's results never pass for the current ones, and the saved results hold what
the memorization numbers are computed from."""

import json
import os

import pytest

from hf_ext.recipes.federated import main

from .conftest import tiny_recipe_args

RESULT_FILES = ("results.json", "memorization_table.md", "memorization_vs_rounds.png")

TINY = tiny_recipe_args()


@pytest.mark.parametrize(
    "argv,match",
    [
        # set by the recipe for every run: the value would be silently replaced
        (
            ["--configs", "lora", "--dp_clip_norm", "1.0", "--max_grad_norm", "0"],
            "--dp_clip_norm is set by the recipe",
        ),
        # ... refused by name before the arguments' own checks (was: "set --max_grad_norm 0", then this refusal)
        (["--configs", "lora", "--dp_clip_norm", "1.0"], "--dp_clip_norm is set by the recipe"),
        (["--configs", "lora", "--dp-clip-norm=1.0"], "--dp_clip_norm is set by the recipe"),
        (["--configs", "lora", "--dp_noise_multiplier", "0.5"], "--dp_noise_multiplier is set by the recipe"),
        (["--configs", "lora", "--client_dp_noise_multiplier", "0.5"], "--client_dp_noise_multiplier is set by the"),
        (["--configs", "lora", "--goldfish_k", "3"], "--goldfish_k is set by the recipe"),
        (["--configs", "lora+goldfish", "--goldfish_context_width", "7"], "--defense_goldfish_context_width"),
        (["--configs", "lora", "--secure_aggregation", "true"], "'\\+secagg' in --configs"),
        (["--configs", "lora", "--client_dp_clip_norm", "0.5"], "--client_dp_clip_norm is set by the recipe"),
        (["--configs", "lora", "--use_lora", "false"], "--use_lora is set by the recipe"),
        (["--configs", "lora", "--aggregation", "merge_then_average"], "lora_merge"),
        (["--configs", "lora", "--learning_rate", "0.5"], "--lora_learning_rate"),
        (["--configs", "lora", "--max_steps", "7"], "--local_steps"),
        (["--configs", "lora+secagg", "--secagg_clipping_range", "4"], "Flower apps"),
        # only act on runs with a defense (or a LoRA base) that --configs does not have
        (["--configs", "lora", "--secure_aggregation_threshold", "2"], "--secure_aggregation_threshold only applies"),
        (["--configs", "lora", "--client_dp_noise_seed", "3"], "--client_dp_noise_seed only applies"),
        (["--configs", "lora", "--dp_noise_seed", "3"], "--dp_noise_seed only applies"),
        (["--configs", "lora", "--dp_delta", "1e-6"], "--dp_delta only applies"),
        (["--configs", "full", "--lora_r", "4"], "--lora_r only applies to runs with a LoRA base"),
        (["--configs", "lora", "--local_epochs", "2"], "--local_epochs only applies"),
        # used, but would fail only after pretraining / earlier runs
        (["--configs", "full,lora+dp", "--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps 1"),
        (["--configs", "full,lora", "--client_learning_rates", "0.1,0.2,0.3"], "3 values for --num_clients 2"),
        (["--setting", "both", "--configs", "lora", "--client_learning_rates", "0.1,0.2"], "--setting both"),
        # fl9 #2: the per-client rates replaced the per-base rates of every run silently
        (
            ["--configs", "full,lora", "--client_learning_rates", "1e-4,1e-4", "--full_learning_rate", "5e-4"],
            "--full_learning_rate would be ignored: --client_learning_rates",
        ),
        (
            ["--configs", "lora", "--client_learning_rates", "1e-4,1e-4", "--lora_learning_rate", "5e-2"],
            "--lora_learning_rate would be ignored: --client_learning_rates",
        ),
        (  # also at its default value
            ["--configs", "lora", "--client_learning_rates", "1e-4,1e-4", "--lora-learning-rate=1e-2"],
            "--lora_learning_rate would be ignored: --client_learning_rates",
        ),
        (["--configs", "full,lora", "--lora_target_modules", "no_such_proj"], "--lora_target_modules names"),
        (["--num_clients", "40"], "--num_clients 40 exceeds"),
        (["--split_column", "nope"], "--split_column 'nope'"),
        (["--num_canaries", "1000"], "--num_canaries"),
        (["--bleu_threshold", "1.5"], "--bleu_threshold must be in"),
        (["--configs", "lora+secagg", "--num_clients", "1"], "'\\+secagg' hides each client's update"),
        (["--docs_per_client", "0", "--pretrain_steps", "3"], "--pretrain_steps warms the tiny model"),
    ],
)
def test_ignored_or_late_failing_flags_are_refused_before_output_dir_exists(tmp_path, argv, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--output_dir", str(out), *TINY, *argv])
    assert not os.path.exists(out)


def test_validate_refuses_a_per_base_rate_next_to_client_learning_rates(tmp_path):
    """fl9 #2 through `validate` (parsed arguments, as the API passes them; `main` refuses the flags from the command
    line first): a non-default --full_learning_rate next to --client_learning_rates would be ignored."""
    from hf_ext.recipes import federated as recipe
    from hf_ext.recipes._common import parse_recipe_args

    argv = ["--configs", "full", "--client_learning_rates", "1e-4,1e-4", "--full_learning_rate", "5e-4"]
    args = parse_recipe_args(
        recipe.ARGUMENT_CLASSES,
        ["--output_dir", str(tmp_path / "out"), *TINY, *argv],
        resume="refuse",
    )
    with pytest.raises(ValueError, match="--full_learning_rate would be ignored: --client_learning_rates"):
        recipe.validate(*args)
    assert not (tmp_path / "out").exists()


def test_tiny_model_flags_are_refused_with_a_pretrained_model(tmp_path):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg.save_pretrained(tmp_path / "m")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--hidden_size shapes or warms up the tiny model"):
        main(["--output_dir", str(out), "--model_name_or_path", str(tmp_path / "m"), "--hidden_size", "32"])
    assert not out.exists()


def test_flags_that_apply_are_accepted(monkeypatch, tmp_path):
    """The refusals above do not hit the flags that act on the chosen runs."""
    import hf_ext.federated as fedmod

    class Stop(Exception):
        pass

    seen = []

    def fake_init(self, model, clients, fed_args, training_args, **kw):
        seen.append((fed_args, training_args))
        raise Stop

    monkeypatch.setattr(fedmod.FederatedSimulation, "__init__", fake_init)
    argv = ["--configs", "lora+dp+secagg", "--dp_noise_seed", "3", "--dp_delta", "1e-6", "--lora_r", "4"]
    argv += ["--secure_aggregation_threshold", "2", "--lora_target_modules", "q_proj,v_proj"]
    with pytest.raises(Stop):
        main(["--output_dir", str(tmp_path / "out"), *TINY, *argv])
    fa, ta = seen[0]
    assert (ta.dp_noise_seed, ta.dp_delta, fa.lora_r, fa.secure_aggregation_threshold) == (3, 1e-6, 4, 2)
    assert fa.target_modules() == ["q_proj", "v_proj"] and fa.secure_aggregation and ta.dp_clip_norm == 1.0


def test_interrupted_rerun_leaves_no_earlier_results(monkeypatch, tmp_path):
    """The recipe cannot resume, so the results of an earlier run in the same folder are removed before any work: a
    rerun that is interrupted leaves no results.json / table / PNG that would pass for its own."""
    import hf_ext.federated as fedmod

    out = tmp_path / "out"
    out.mkdir()
    for name in RESULT_FILES:
        (out / name).write_text("from the earlier run")
    (out / "notes.txt").write_text("the user's")

    def interrupted(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedmod.FederatedSimulation, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["--output_dir", str(out), *TINY, "--configs", "full"])
    assert not any((out / name).exists() for name in RESULT_FILES)
    assert (out / "notes.txt").read_text() == "the user's"  # only the recipe's own result files go


def test_results_hold_the_per_canary_records_the_rates_come_from(monkeypatch, tmp_path):
    """results.json keeps, every round, one record per canary and prefix length: the reported rates are recomputed
    from it independently."""
    import hf_ext.federated as fedmod

    def untrained_round(self):  # the measurement is what is tested; skip the clients' training (time)
        self.round += 1
        return {"round": self.round, "clients": []}

    monkeypatch.setattr(fedmod.FederatedSimulation, "run_round", untrained_round)
    out = tmp_path / "out"
    main(["--output_dir", str(out), *TINY, "--configs", "lora", "--replication", "2:0.5,1:0.5"])
    results = json.loads((out / "results.json").read_text())
    history = results["runs"]["lora"]["history"]
    assert [h["round"] for h in history] == [0, 1]
    ids = {c["canary_id"]: c["replication"] for c in results["canaries"]}
    for h in history:
        records = h["memorization"]["records"]
        assert sorted((r["canary_id"], r["prefix_length"]) for r in records) == sorted((c, 5) for c in ids)
        for rep in (2, 1):
            rows = [r for r in records if ids[r["canary_id"]] == rep]
            assert h[f"exact_{rep}x"] == sum(bool(r["exact"]) for r in rows) / len(rows)
            assert h[f"approx_{rep}x"] == sum(bool(r["approximate"]) for r in rows) / len(rows)
            assert h[f"bleu_{rep}x"] == pytest.approx(sum(r["bleu"] for r in rows) / len(rows))
            assert h["memorization"]["per_replication"][str(rep)]["exact"] == {"5": h[f"exact_{rep}x"]}
    assert "| lora | federated | 2 | 2 | 1 |" in (out / "memorization_table.md").read_text()


def test_canaries_are_probed_and_scored_only_on_the_block_they_train_on(monkeypatch, tmp_path):
    """A canary copy trains as one block of --block_size tokens (`canary_rows` cuts it). The recipe used to probe and
    score the whole canary: at the defaults (50 words, 128-token blocks) every canary had 131 to 279 tokens and a sixth
    of the compared window tokens had never been trained on; `--prefix_lengths ...,500` with 128-token blocks compared
    only such text. Canaries and exposure references are now cut to the whole words that fit in one block, and a block
    too short for the longest prefix plus the window is refused."""
    import hf_ext.federated as fedmod
    from hf_ext.data import build_tokenizer

    seen = {}

    def fake_exposure(model, tokenizer, members, references):
        seen.setdefault("texts", []).extend([*members, *references])
        return 0.0

    def untrained_round(self):
        self.round += 1
        return {"round": self.round, "clients": []}

    monkeypatch.setattr(fedmod, "canary_exposure", fake_exposure)
    monkeypatch.setattr(fedmod.FederatedSimulation, "run_round", untrained_round)
    out = tmp_path / "out"
    main(["--output_dir", str(out), *TINY, "--configs", "full", "--canary_words", "60", "--pretrain_steps", "0"])
    tok = build_tokenizer(300)
    results = json.loads((out / "results.json").read_text())
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in seen["texts"]]
    assert max(lengths) <= 32 and min(lengths) > 20  # cut to the block, not to nothing
    texts = [c["text"] for c in results["canaries"]]
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) <= 32 for t in texts)
    assert all(t in seen["texts"] for t in texts)

    with pytest.raises(ValueError, match="--block_size 32 is shorter than the longest prefix plus the window"):
        main(["--output_dir", str(tmp_path / "o2"), *TINY, "--window", "50"])
    assert not (tmp_path / "o2").exists()


def test_canary_rows_warns_when_a_canary_is_cut(small_tokenizer):
    from transformers.testing_utils import CaptureLogger

    from hf_ext.federated import simulation

    long, short = "alpha beta gamma delta " * 20, "alpha beta"
    with CaptureLogger(simulation.logger) as cap:
        rows = simulation.canary_rows([long, short], small_tokenizer, 16)
    assert "1 of 2 canary copies are longer than block_size=16" in cap.out
    assert [sum(m) for m in rows["attention_mask"]][0] == 16
    with CaptureLogger(simulation.logger) as cap:
        simulation.canary_rows([short], small_tokenizer, 16)
    assert cap.out == ""


def test_reported_epsilon_is_recomputed_from_the_saved_dp_steps(monkeypatch, tmp_path):
    """results.json saves, per '+dp' run, each client's composed DP-SGD steps; dp-accounting's own PLD accountant,
    composed from the recipe's settings alone (q = batch / client blocks, local_steps x rounds steps), gives the
    reported epsilon of every round."""
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    import hf_ext.federated as fedmod
    import hf_ext.utils.evaluation as evaluation

    # the probes are not what is tested here (time): fixed stand-ins, the DP-SGD training is real
    mem = {"per_replication": {}, "num_skipped": 0, "records": []}
    monkeypatch.setattr(fedmod, "measure_memorization", lambda *a, **k: mem)
    monkeypatch.setattr(fedmod, "canary_exposure", lambda *a, **k: 0.0)
    monkeypatch.setattr(evaluation, "causal_lm_eval_loss", lambda *a, **k: 1.0)
    monkeypatch.setattr("hf_ext.recipes.federated.write_outputs", lambda results, out: None)
    out = tmp_path / "out"
    argv = ["--configs", "lora+dp", "--num_rounds", "2", "--defense_dp_noise_multiplier", "1.3", "--dp_delta", "1e-6"]
    results = main(["--output_dir", str(out), *TINY, *argv, "--per_device_train_batch_size", "4"])
    run = json.loads(json.dumps(results))["runs"]["lora+dp"]  # as results.json holds it
    assert (run["dp"]["delta"], run["dp"]["noise_multiplier"], run["dp"]["accountant"]) == (1e-6, 1.3, "pld")
    for r in (1, 2):
        expected = []
        for n in run["client_sizes"]:
            event = dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(4 / n, dp_accounting.GaussianDpEvent(1.3)),
                r,  # 1 step a round
            )
            acc = PLDAccountant(value_discretization_interval=1e-3)
            acc.compose(event)
            expected.append(acc.get_epsilon(1e-6))
        history = run["history"][r]
        assert [c["dp_epsilon"] for c in history["clients"]] == pytest.approx(expected, rel=2e-3)
        assert history["dp_epsilon_max"] == pytest.approx(max(expected), rel=2e-3)
    assert run["dp"]["client_steps"] == [[[4 / n, 1.3, 2]] for n in run["client_sizes"]]


def test_results_json_is_strict_json_when_epsilon_is_infinite(tmp_path):
    """Zero DP noise (allowed) has an infinite epsilon: results.json held the bare token Infinity, which strict JSON
    readers refuse; it is now the string "Infinity"."""
    out = tmp_path / "out"
    main(["--output_dir", str(out), *TINY, "--configs", "lora+dp", "--defense_dp_noise_multiplier", "0"])

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    results = json.loads((out / "results.json").read_text(), parse_constant=refuse)
    clients = results["runs"]["lora+dp"]["history"][-1]["clients"]
    assert clients and all(c["dp_epsilon"] == "Infinity" for c in clients)
