"""The HyperINF recipe's task, method options and reported figures: flipped labels really differ from the true ones,
each method gets the options its flags and the docs name, and the detection / selection figures use the flags given."""

import numpy as np
import pytest
import torch

from hf_ext.recipes import hyperinf as hp


def test_every_flipped_label_differs_from_the_true_one():
    """A 'flipped' training label is moved to another domain, never left on its own (else the noise rate and the
    detection recall would count clean examples as mislabeled)."""
    from hf_ext.data import build_tokenizer

    task = hp.TaskArguments(domains="devtools,networking", max_length=16, num_val=8, num_test=8, max_train=60)
    train, val, test, is_noisy, domains = hp.build_task(task, build_tokenizer(512), seed=3)
    labels, clean = np.asarray(train["labels"]), np.asarray(train["clean_label"])
    assert is_noisy.sum() == round(0.2 * len(train)) > 0
    assert (labels[is_noisy] != clean[is_noisy]).all()
    assert (labels[~is_noisy] == clean[~is_noisy]).all()


def test_estimator_options_follow_the_flags_and_the_reference_settings():
    """hyperinf takes --schulz_iterations / --schulz_init, lissa --lissa_iterations; hyperinf_reference is the
    reference's fixed setting (identity init, 30 iterations, extra damping 1e-3) whatever those flags say."""
    inf = hp.InfluenceArguments(schulz_iterations=7, schulz_init="transpose", lissa_iterations=3, damping_scale=0.2,
                                influence_batch_size=5)  # fmt: skip
    name, opts = hp.estimator_options("hyperinf", inf)
    assert name == "hyperinf"
    assert (opts["schulz_iterations"], opts["schulz_init"], opts["damping_scale"], opts["batch_size"]) == (
        7, "transpose", 0.2, 5)  # fmt: skip
    name, opts = hp.estimator_options("hyperinf_reference", inf)
    assert name == "hyperinf"
    assert (opts["schulz_iterations"], opts["schulz_init"], opts["schulz_extra_damping"]) == (30, "identity", 1e-3)
    assert opts["schulz_tol"] is None and opts["damping_scale"] == 0.2
    name, opts = hp.estimator_options("lissa", inf)
    assert (name, opts["lissa_iterations"], opts["damping_scale"]) == ("lissa", 3, 0.2)


def test_inspect_fraction_one_is_accepted(tmp_path):
    """--inspect_fraction is a share in (0, 1]: inspecting the whole training set is allowed."""
    calls = []

    class Stop(Exception):
        pass

    def stop(*a, **k):
        calls.append(a)
        raise Stop

    import unittest.mock as mock

    with mock.patch.object(hp, "build_task", stop), pytest.raises(Stop):
        hp.main(["--inspect_fraction", "1.0", "--output_dir", str(tmp_path / "out"), "--pretrain_steps", "0"])
    assert calls


def test_reported_fit_recall_and_selection_use_the_given_flags(monkeypatch, tmp_path):
    """train_flipped_fit is the accuracy on the flipped (trained-on) labels; recall_at_inspect is the recall of the
    flipped examples among the top --inspect_fraction by influence; per-class selection keeps the lowest-influence
    --select_fraction within each training (observed) label."""
    seen = {}

    def no_training(model, train, training_args, run_name, resume_from_checkpoint=None, data_collator=None):
        seen.setdefault(run_name, (model, train))
        return model

    monkeypatch.setattr(hp, "fine_tune", no_training)
    argv = ["--pretrain_steps", "0", "--hidden_size", "16", "--num_attention_heads", "2", "--num_hidden_layers", "1",
            "--max_train", "40", "--num_val", "8", "--num_test", "8", "--max_length", "16", "--methods", "tracin",
            "--inspect_fraction", "0.5", "--select_fraction", "0.5", "--num_threads", "1", "--disable_tqdm", "true",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    results = hp.main(argv)
    model, train = seen["full"]
    is_noisy = results["is_noisy"]
    labels = np.asarray(train["labels"])
    with torch.no_grad():
        pred = model(input_ids=torch.tensor(train["input_ids"])).logits.argmax(-1).numpy()
    assert results["fine_tune"]["train_flipped_fit"] == pytest.approx((pred == labels)[is_noisy].mean())

    scores = np.asarray(results["scores"]["tracin"])
    assert len(np.unique(scores)) == len(scores) == 40
    top = np.argsort(-scores)[:20]  # half of the 40 training examples
    expected_recall = is_noisy[top].sum() / is_noisy.sum()
    assert results["methods"]["tracin"]["recall_at_inspect"] == pytest.approx(expected_recall)

    _, kept = seen["select_random"]
    for label in np.unique(labels):
        n = int((labels == label).sum())
        assert int((np.asarray(kept["labels"]) == label).sum()) == max(1, int(round(0.5 * n)))
    # tracin's selection: within each observed label, the half with the lowest influence (brute force)
    expected = []
    for label in np.unique(labels):
        members = [i for i in range(40) if labels[i] == label]
        expected += sorted(members, key=lambda i: scores[i])[: max(1, int(round(0.5 * len(members))))]
    _, kept = seen["select_tracin"]
    assert kept["input_ids"] == [train["input_ids"][i] for i in sorted(expected)]


def test_only_the_main_fine_tuning_resumes_from_the_checkpoint(monkeypatch, tmp_path):
    """--resume_from_checkpoint continues the interrupted main LoRA fine-tuning ("full"); the data-selection
    retrainings (runs/select_*) always start from scratch (fine_tune's docstring)."""
    import transformers
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification

    resumed = {}

    def fake_train(self, resume_from_checkpoint=None, **kw):
        resumed[self.args.output_dir] = resume_from_checkpoint

    monkeypatch.setattr(transformers.Trainer, "train", fake_train)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_labels=2, pad_token_id=0)  # fmt: skip
    model = LlamaForSequenceClassification(cfg)
    data = Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5, 6]], "labels": [0, 1]})
    args = hp.HyperInfTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    ckpt = str(tmp_path / "out" / "checkpoint-4")
    hp.fine_tune(model, data, args, "full", resume_from_checkpoint=ckpt)
    hp.fine_tune(model, data, args, "select_random", resume_from_checkpoint=ckpt)
    assert resumed == {str(tmp_path / "out"): ckpt, str(tmp_path / "out" / "runs" / "select_random"): None}
