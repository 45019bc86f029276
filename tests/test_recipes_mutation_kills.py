"""Behaviour of the shared recipe helpers and of the pretrain recipe that users rely on: argument checks, the
whole-run training loss, text-file checks, the fresh model's config, the seed and the evaluation split."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from hf_ext.recipes._common import check_text_file, whole_run_train_loss

TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_new_tokens", "2", "--model_type", "llama",
    "--fp8_backend", "none", "--vocab_size", "512", "--disable_tqdm", "true", "--report_to", "none",
    "--use_cpu", "true",
]  # fmt: skip


def _trainer(log_history, global_step, initial_step):
    return SimpleNamespace(
        state=SimpleNamespace(log_history=log_history, global_step=global_step), _initial_global_step=initial_step
    )


def test_whole_run_train_loss_weights_each_logged_mean_by_its_steps():
    """After a resume at step 4 of a 6-step run, the reported loss is the step-weighted mean over all six steps:
    the logs at steps 2 and 4 (each the mean since the previous log) plus this call's mean for steps 5-6."""
    logs = [
        {"step": 2, "loss": 4.0},
        {"step": 2, "eval_loss": 9.0},
        {"step": 4, "loss": 3.0},
        {"step": 6, "loss": 99.0},  # logged by the resumed call itself: covered by this_call_mean
    ]
    got = whole_run_train_loss(_trainer(logs, 6, 4), this_call_mean=1.0)
    assert got == pytest.approx((4.0 * 2 + 3.0 * 2 + 1.0 * 2) / 6)
    # uneven log intervals: logs at steps 1 and 4, resume at 4 of 5
    logs = [{"step": 1, "loss": 6.0}, {"step": 4, "loss": 2.0}]
    assert whole_run_train_loss(_trainer(logs, 5, 4), 0.5) == pytest.approx((6.0 * 1 + 2.0 * 3 + 0.5 * 1) / 5)


def test_whole_run_train_loss_is_unknown_when_logs_stop_short_of_the_resume_step():
    """A checkpoint saved between two logs (resume at 3, logs at 2 and 4): the losses of step 3 were never recorded,
    so no whole-run mean can be given."""
    logs = [{"step": 2, "loss": 4.0}, {"step": 4, "loss": 3.0}]
    assert whole_run_train_loss(_trainer(logs, 6, 3), 1.0) is None
    assert whole_run_train_loss(_trainer(logs, 6, 0), 1.25) == 1.25  # a fresh run: the call's own mean


def test_a_utf8_character_split_by_the_sniffed_prefix_is_accepted(tmp_path):
    """The text check reads the first 8 KiB; a valid file whose multi-byte character straddles that boundary is
    text, not binary."""
    path = tmp_path / "data.txt"
    path.write_bytes(b"a" * 8191 + "é and more text\n".encode())
    check_text_file(str(path), "--train_file")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"a" * 100 + b"\xff\xfe" + b"b" * 100)
    with pytest.raises(ValueError, match="not UTF-8"):
        check_text_file(str(bad), "--train_file")


def test_max_steps_zero_is_refused_before_work(tmp_path):
    """`--max_steps 0` would make the Trainer fall back to --num_train_epochs (3 epochs by default): refused."""
    from hf_ext.recipes.pretrain import main

    out = tmp_path / "o"
    with pytest.raises(ValueError, match="--max_steps"):
        main([*TINY, "--max_steps", "0", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("model_type", ["llama", "fog"])
def test_num_key_value_heads_reaches_the_fresh_model(model_type):
    """--num_key_value_heads sizes the fresh model's GQA groups (llama and the FOG recipe alike); the fresh model
    ties its input and output embeddings."""
    from hf_ext.recipes.pretrain import ModelArguments, fresh_config

    args = ModelArguments(model_type=model_type, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    config = fresh_config(args, vocab_size=300, block_size=32)
    assert config.num_key_value_heads == 2
    assert config.tie_word_embeddings is True
    assert fresh_config(ModelArguments(model_type="llama", num_attention_heads=4), 300, 32).num_key_value_heads == 4


def test_vocab_size_with_a_loaded_tokenizer_is_refused(tmp_path):
    """--vocab_size sizes only the tokenizer built on the fly; with --tokenizer_name it would be ignored."""
    from hf_ext.data import build_tokenizer
    from hf_ext.recipes.pretrain import main

    folder = tmp_path / "tok"
    build_tokenizer(512).save_pretrained(folder)
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="--vocab_size"):
        main([*TINY, "--max_steps", "1", "--tokenizer_name", str(folder), "--output_dir", str(out)])
    assert not out.exists()


def _pretrain(out, *extra):
    from hf_ext.recipes.pretrain import main

    return main([*TINY, "--max_steps", "1", "--logging_steps", "1", "--output_dir", str(out), *extra])


#: the seed-5 run's flags: learning rate 0 (the saved model is the initial one), a checkpoint at its one step
SEED5 = ["--seed", "5", "--learning_rate", "0", "--max_eval_blocks", "2", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def seed5_run(tmp_path_factory):
    """A finished 1-step run (`SEED5`), shared by the tests below that read it (or copy it before changing it)."""
    out = tmp_path_factory.mktemp("seed5") / "run"
    metrics = _pretrain(out, *SEED5)
    return out, metrics


def test_seed_sets_the_fresh_models_initialisation(tmp_path, seed5_run):
    """With learning rate 0 the saved model is the initial one: it is the model `set_seed(--seed)` builds from the
    saved config, and two seeds give two different initialisations."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    saved = {5: load_file(str(seed5_run[0] / "model.safetensors"))}
    _pretrain(tmp_path / "6", "--seed", "6", "--learning_rate", "0", "--max_eval_blocks", "1")
    saved[6] = load_file(str(tmp_path / "6" / "model.safetensors"))
    set_seed(5)
    expected = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(seed5_run[0])).state_dict()
    for key, value in saved[5].items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(saved[5][k], saved[6][k]) for k in saved[5])


def test_eval_loss_is_the_token_mean_over_the_first_max_eval_blocks_held_out_blocks(seed5_run):
    """`eval_loss` (and `perplexity` = exp of it) is measured on the held-out split, limited to --max_eval_blocks
    blocks, with the saved model: recomputed here from the first two held-out blocks (of the shared seed-5 run)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ext.data import load_text_datasets, pack_dataset

    out, metrics = seed5_run
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    _, held_out = load_text_datasets(None, None, None, None, "text", seed=1)
    blocks = pack_dataset(held_out, tok, 32, "text")
    assert len(blocks) > 2
    ids = torch.tensor(blocks[:2]["input_ids"])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids).loss.double().item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    saved = json.loads((out / "pretrain_results.json").read_text())
    assert saved["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert saved["perplexity"] == pytest.approx(torch.tensor(expected).exp().item(), rel=1e-5)


def test_a_resumed_run_keeps_the_earlier_results_until_it_writes_its_own(tmp_path, monkeypatch, seed5_run):
    """A fresh run removes an earlier run's report files before it starts; a resumed run continues that run and
    removes nothing (here it is stopped when its model is built, after the arguments, the tokenizer and the data are
    checked). The earlier run is a copy of the shared seed-5 run."""
    import hf_ext.recipes.pretrain

    out = tmp_path / "run"
    shutil.copytree(seed5_run[0], out)
    results = out / "pretrain_results.json"
    assert results.is_file()

    def stop(*args, **kwargs):
        raise RuntimeError("stopped")

    build_model = hf_ext.recipes.pretrain.build_model
    monkeypatch.setattr(hf_ext.recipes.pretrain, "build_model", stop)
    with pytest.raises(RuntimeError, match="stopped"):  # a longer run continues it (checkpoint-1 is its last step)
        _pretrain(out, *SEED5, "--resume_from_checkpoint", "--max_steps", "2")
    assert results.is_file()
    shutil.rmtree(out / "checkpoint-1")
    # the fresh run stops when it starts training: the older results are removed once the Trainer is built (and a
    # resume's schedule checked), so that a run refused before leaves the folder as it was
    monkeypatch.setattr(hf_ext.recipes.pretrain, "build_model", build_model)
    monkeypatch.setattr("hf_ext.utils.resume.train_or_restore_finished", stop)
    with pytest.raises(RuntimeError, match="stopped"):
        _pretrain(out, *SEED5)
    assert not results.exists()
