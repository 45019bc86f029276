"""The federated recipe as a user drives it: the evaluation set is the held-out split without the canary documents,
and the reported steps, gains and accepted boundary values are right."""

import json

import pytest

from hf_ext.recipes.federated import main

from .conftest import tiny_recipe_args

TINY = tiny_recipe_args()


def _fake_history(exposures):
    """A run's per-round records (what `FederatedSimulation.run` returns), with the given 2x-canary exposures."""
    return [
        {"round": r, "eval_loss": 3.0 - 0.1 * r, "exact_2x": 0.0, "approx_2x": 0.0, "bleu_2x": 0.1, "exposure_2x": e}
        for r, e in enumerate(exposures)
    ]


@pytest.fixture
def captured_runs(monkeypatch):
    """Replace the simulation by a stand-in that records each run's arguments and returns a fixed history."""
    import hf_ext.federated as fedmod

    seen = []

    def fake_init(self, model, clients, fed_args, training_args, **kw):
        self.model, self.clients, self.fed_args, self.training_args = model, clients, fed_args, training_args
        self.round_callback = kw.get("round_callback")
        seen.append(self)

    def fake_run(self):
        return _fake_history([0.5 + 0.4 * r for r in range(self.fed_args.num_rounds + 1)])

    monkeypatch.setattr(fedmod.FederatedSimulation, "__init__", fake_init)
    monkeypatch.setattr(fedmod.FederatedSimulation, "run", fake_run)
    return seen


def test_reported_optimizer_steps_and_exposure_gain(captured_runs, tmp_path):
    """optimizer_steps = local steps x clients x rounds; the table's exposure gain is the last round's exposure minus
    that of the starting model (round 0)."""
    out = tmp_path / "out"
    argv = ["--configs", "full", "--num_rounds", "3", "--local_steps", "2", "--num_clients", "2"]
    res = main(["--output_dir", str(out), *tiny_recipe_args(num_rounds=None, local_steps=None), *argv])
    run = res["runs"]["full"]
    assert run["optimizer_steps"] == 2 * 2 * 3
    assert json.loads((out / "results.json").read_text())["runs"]["full"]["optimizer_steps"] == 12
    table = (out / "memorization_table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| full |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    # exposures 0.5, 0.9, 1.3, 1.7 over rounds 0..3: gain 1.7 - 0.5
    assert float(cells[header.index("exposure_2x gain")]) == pytest.approx(1.2, abs=1e-3)
    assert float(cells[header.index("eval loss")]) == pytest.approx(2.7, abs=1e-3)
    assert cells[header.index("steps")] == "12"


def test_local_epochs_is_accepted_with_local_steps_zero(captured_runs, tmp_path):
    """--local_steps 0 means: train --local_epochs per round (the help text); the flag must then be accepted and used."""
    res = main(["--output_dir", str(tmp_path / "out"), *tiny_recipe_args(local_steps=0), "--configs", "full",
                "--local_epochs", "2"])  # fmt: skip
    (sim,) = captured_runs
    assert (sim.fed_args.local_steps, sim.fed_args.local_epochs) == (0, 2)
    assert res["runs"]["full"]["optimizer_steps"] is None


def test_boundary_values_the_help_allows_are_accepted(captured_runs, tmp_path):
    """--block_size equal to the longest prefix plus the window, and --bleu_threshold 1 (exact character match), pass
    validate. (The recipe then refuses the canaries, cut to whole words within one block, as shorter than prefix +
    window, naming the --block_size that fits: that check runs once they are tokenized,
    test_recipe_refusals_before_clearing.py.)"""
    from hf_ext.recipes import federated as rec
    from hf_ext.recipes._common import parse_recipe_args

    argv = ["--output_dir", str(tmp_path / "v"), "--configs", "full", *tiny_recipe_args(prefix_lengths=5, window=27)]
    rec.validate(*parse_recipe_args(rec.ARGUMENT_CLASSES, argv, resume="refuse"))  # --block_size 32 = 5 + 27
    # a canary cut to 32 tokens keeps 25 here: prefix 5 + window 19 leaves one split (split_index, as the reference,
    # skips T <= prefix + window; window 20 was accepted until 2026-12-05)
    argv = tiny_recipe_args(block_size=32, prefix_lengths=5, window=19, bleu_threshold=1.0)
    main(["--output_dir", str(tmp_path / "out"), *argv, "--configs", "full"])
    assert len(captured_runs) == 1


def test_eval_set_is_the_held_out_split_without_canary_documents(monkeypatch, tmp_path):
    """The utility (eval loss) is measured on at most --max_eval_blocks blocks of the test split, and the held-out
    documents used as canary bodies (trained on) are left out of it."""
    import hf_ext.data as data
    import hf_ext.federated as fedmod
    import hf_ext.utils.evaluation as evaluation
    from hf_ext.data import load_corpus

    test_docs = list(load_corpus("test")["text"])
    # --num_canaries 2, --canary_words 50: the first two held-out documents the recipe may use (at32 F1: none
    # sharing a run of words with the training split)
    from hf_ext.recipes.federated import DataArguments, held_out_texts

    canary_bodies = held_out_texts(DataArguments(num_canaries=2, canary_words=50))[:2]
    packed_texts, eval_sizes = [], []
    real_pack = data.pack_dataset

    def recording_pack(ds, *a, **kw):
        if "text" in ds.column_names:
            packed_texts.append(list(ds["text"]))
        return real_pack(ds, *a, **kw)

    def fake_eval_loss(model, ds, *a, **kw):
        eval_sizes.append(len(ds))
        return 1.0

    def one_probe(self):
        rec = self.round_callback(0, self)
        return [{**rec, "round": 0}]

    mem = {"per_replication": {}, "num_skipped": 0, "records": []}
    monkeypatch.setattr(data, "pack_dataset", recording_pack)
    monkeypatch.setattr(evaluation, "causal_lm_eval_loss", fake_eval_loss)
    monkeypatch.setattr(fedmod, "measure_memorization", lambda *a, **k: mem)
    monkeypatch.setattr(fedmod, "canary_exposure", lambda *a, **k: 0.0)
    monkeypatch.setattr(fedmod.FederatedSimulation, "run", one_probe)
    monkeypatch.setattr("hf_ext.recipes.federated.write_outputs", lambda results, out: None)
    main(["--output_dir", str(tmp_path / "out"), *TINY, "--configs", "full", "--max_eval_blocks", "3"])
    assert eval_sizes == [3]
    eval_calls = [texts for texts in packed_texts if set(texts) <= set(test_docs)]
    assert len(eval_calls) == 1
    assert sorted(eval_calls[0]) == sorted(t for t in test_docs if t not in canary_bodies)
    assert not any(body in texts for texts in packed_texts for body in canary_bodies)
