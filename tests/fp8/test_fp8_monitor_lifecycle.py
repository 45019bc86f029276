"""Issue 15 item 6: the kurtosis monitor follows modules swapped after it was built and fails loudly when a site is
gone; the health callback restores its state from the checkpoint actually resumed from, wherever it lives."""

import json
import shutil

import pytest
import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from hf_ext.fp8 import Fp8HealthCallback, KurtosisMonitor, convert
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _model():
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**TINY))


def test_monitor_built_before_convert_measures_every_site_after_it():
    model = _model()
    monitor = KurtosisMonitor(model)
    convert(model, "emulated")
    with torch.no_grad(), monitor.active():
        model(torch.randint(0, 512, (2, 8)))
    stats = monitor.collect()
    measured = {k.split("/")[0] for k in stats if k.endswith("/kurtosis/layer_1")}
    assert measured == set(monitor.sites) and {"qkv", "qkv_input", "mlp_out", "mlp_intermediate"} <= measured


def test_monitor_fails_loudly_when_a_site_disappears():
    model = _model()
    monitor = KurtosisMonitor(model)
    del model.model.layers[1].mlp.down_proj
    with pytest.raises(RuntimeError, match="'mlp_out' of layer 1"):
        monitor.enable()


@pytest.fixture(scope="module")
def train_ds(corpus, small_tokenizer):
    from hf_ext.data import pack_dataset

    return pack_dataset(corpus.select(range(60)), small_tokenizer, block_size=32).select(range(32))


def _trainer(out, ds, cb, **kw):
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=6, learning_rate=3e-3, report_to=[],
        use_cpu=True, seed=0, save_strategy="steps", save_steps=4, disable_tqdm=True, **kw,
    )  # fmt: skip
    return Trainer(model=_model(), args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=[cb])


def test_resume_from_a_checkpoint_moved_elsewhere_restores_the_callback(tmp_path, train_ds):
    first = Fp8HealthCallback(every_n_steps=2, baseline_steps=2)
    _trainer(tmp_path / "run", train_ds, first).train()
    moved = tmp_path / "archive" / "good-step-4"
    shutil.copytree(tmp_path / "run" / "checkpoint-4", moved)
    saved = json.loads((moved / "fp8_health.json").read_text())
    assert [h["step"] for h in saved["history"]] == [2, 4]

    resumed = Fp8HealthCallback(every_n_steps=2, baseline_steps=2)
    seen = {}

    class Peek(Fp8HealthCallback.__mro__[1]):  # TrainerCallback
        def on_train_begin(self, args, state, control, **kw):
            seen["history"] = [h["step"] for h in resumed.history]
            seen["baseline_obs"] = json.loads(json.dumps(resumed.baseline_obs))

    trainer = _trainer(tmp_path / "elsewhere", train_ds, resumed)
    trainer.add_callback(Peek())
    trainer.train(resume_from_checkpoint=str(moved))
    assert seen["history"] == [2, 4] and seen["baseline_obs"] == saved["baseline_obs"]
    assert [h["step"] for h in resumed.history] == [2, 4, 6]


def test_resuming_the_same_trainer_after_an_interrupt_restores_the_checkpoints_alerts(
    tmp_path, train_ds, interrupt_after_step
):
    """A run interrupted after its checkpoint (Ctrl-C in a notebook) and resumed on the same trainer object kept the
    alerts recorded after the checkpoint and recorded them again: alerts (and the next fp8_health.json) held
    duplicates. They are restored exactly from the checkpoint resumed from, as for a fresh trainer."""

    def run(out, interrupt_at=None):
        # absolute_threshold 2: every monitored step alerts (kurtosis ~3); "warn" only logs
        cb = Fp8HealthCallback(every_n_steps=1, baseline_steps=1, absolute_threshold=2.0, alert_sites=["qkv_input"])
        trainer = _trainer(out, train_ds, cb)
        trainer.args.save_steps = 3
        trainer.add_callback(interrupt_after_step(interrupt_at))
        return trainer, cb

    full, full_cb = run(tmp_path / "full")
    full.train()
    steps = [a["step"] for a in full_cb.alerts]
    assert sorted(set(steps)) == [1, 2, 3, 4, 5, 6]
    same, cb = run(tmp_path / "same", interrupt_at=5)
    with pytest.raises(KeyboardInterrupt):
        same.train()
    same.train(resume_from_checkpoint=True)  # the newest checkpoint: checkpoint-3
    assert [a["step"] for a in cb.alerts] == steps and cb.actions_taken == full_cb.actions_taken
    saved = json.loads((tmp_path / "same" / "checkpoint-6" / "fp8_health.json").read_text())
    assert [a["step"] for a in saved["alerts"]] == steps
