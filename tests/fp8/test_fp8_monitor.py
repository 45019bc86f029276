"""Kurtosis monitor and Fp8HealthCallback: reference values, outliers, Trainer logging, stop, rollback, resume."""

import json
import os

import pytest
import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from hf_ext.fp8 import Fp8HealthCallback, KurtosisMonitor, convert, kurtosis, train_with_rollback
from hf_ext.models.fog import FogConfig

TINY = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def tiny_fog(**kw):
    from hf_ext.models.fog import FogForCausalLM

    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**{**TINY, **kw}))


# ------------------------------------------------------------------------------------------------------------ math
def test_kurtosis_matches_float64_reference_and_is_three_for_gaussians():
    torch.manual_seed(0)
    x = torch.randn(4, 50_000)
    ref = (x.double() ** 4).mean(1) / (x.double() ** 2).mean(1) ** 2
    torch.testing.assert_close(kurtosis(x), ref, rtol=1e-6, atol=0)
    assert torch.all((kurtosis(x) - 3).abs() < 0.15)
    y = x.clone()
    y[0, 0] = 1000.0  # one outlier
    k = kurtosis(y)
    assert k[0] > 100 * k[1]
    with pytest.raises(TypeError, match="torch.Tensor"):
        kurtosis([1.0, 2.0])


def test_monitor_sites_and_values_equal_direct_computation():
    model = tiny_fog()
    monitor = KurtosisMonitor(model)
    assert monitor.sites == ["activation", "qkv_input", "qkv", "q", "k", "mlp_intermediate", "mlp_post_act", "mlp_out"]
    captured = {}
    attn = model.model.layers[1].self_attn
    attn.q_proj.register_forward_pre_hook(lambda m, a: captured.setdefault("in", a[0].detach()))
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(attn, name).register_forward_hook(lambda m, a, o, n=name: captured.setdefault(n, o.detach()))
    ids = torch.randint(0, 128, (3, 16))
    with torch.no_grad():
        model(ids)  # disabled: nothing recorded
        assert not monitor.has_data()
        captured.clear()
        with monitor.active():
            model(ids)
    stats = monitor.collect()
    assert stats["qkv_input/kurtosis/layer_1"] == pytest.approx(kurtosis(captured["in"]).mean().item(), rel=1e-5)
    qkv = torch.cat([captured[n].reshape(3, -1) for n in ("q_proj", "k_proj", "v_proj")], dim=1)
    assert stats["qkv/kurtosis/layer_1"] == pytest.approx(kurtosis(qkv).mean().item(), rel=1e-5)
    assert stats["qkv_input/max_abs/layer_1"] == pytest.approx(captured["in"].abs().max().item(), rel=1e-6)
    assert stats["qkv_input/kurtosis/avg"] == pytest.approx(
        (stats["qkv_input/kurtosis/layer_0"] + stats["qkv_input/kurtosis/layer_1"]) / 2
    )
    assert monitor.collect() == {}
    with pytest.raises(ValueError, match="unknown sites"):
        KurtosisMonitor(model, sites=["attention_probs"])


def test_requested_sites_the_model_lacks_are_refused():
    """GPT-2 fuses Q, K and V (`c_attn`): asking for `q` / `k` used to drop them silently, so an alert on `q` could
    never fire. By default the monitor still takes the sites the model has."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32))
    assert "qkv" in KurtosisMonitor(gpt2).sites and "q" not in KurtosisMonitor(gpt2).sites
    with pytest.raises(ValueError, match=r"sites \['q', 'k'\] exist in none"):
        KurtosisMonitor(gpt2, sites=["q", "k", "qkv"])
    assert KurtosisMonitor(gpt2, sites=["qkv"]).sites == ["qkv"]
    callback = Fp8HealthCallback(alert_sites=["q"])  # sites unset: all the model has, which lacks `q`
    with pytest.raises(ValueError, match=r"alert_sites \['q'\] exist in none"):
        callback.on_train_begin(None, type("S", (), {"global_step": 0, "stateful_callbacks": {}})(), None, model=gpt2)


def test_monitor_handles_blocks_that_lack_a_site():
    """A site present in some blocks only (a layer-paired model's merged block pair has no gate / up projection) is
    measured where it exists. Before, the per-site layouts were stored only for the blocks that had them, so block
    indices shifted and enabling the monitor raised "site 'mlp_intermediate' of layer 1 ... no longer exists"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                                          num_attention_heads=2))  # fmt: skip
    model = convert_to_layer_parallel(source, start=1, end=3, mode="block")  # blocks: layer, pair, layer
    monitor = KurtosisMonitor(model)  # blocks of two types: found as the base model's `layers`
    assert monitor.layers == list(model.model.layers)
    with torch.no_grad(), monitor.active():
        model(torch.randint(0, 64, (2, 8)))
    stats = monitor.collect()
    assert {"mlp_intermediate/kurtosis/layer_0", "mlp_intermediate/kurtosis/layer_2"} <= set(stats)
    assert "mlp_intermediate/kurtosis/layer_1" not in stats  # the pair has no such site
    assert "mlp_post_act/kurtosis/layer_1" in stats and "qkv/kurtosis/layer_1" in stats


def test_monitor_sees_an_injected_outlier_and_fp8_underflow():
    model = tiny_fog()
    monitor = KurtosisMonitor(model, sites=["qkv_input", "activation"])
    ids = torch.randint(0, 128, (2, 32))
    with torch.no_grad(), monitor.active():
        model(ids)
    clean = monitor.collect()
    handle = model.model.layers[1].register_forward_pre_hook(
        lambda m, a: (
            a[0].clone().index_put_((torch.tensor([0]), torch.tensor([3]), torch.tensor([5])), torch.tensor(1e5)),
        )  # fmt: skip
    )
    with torch.no_grad(), monitor.active():
        model(ids)
    handle.remove()
    hit = monitor.collect()
    assert hit["qkv_input/kurtosis/layer_1"] > 50 * clean["qkv_input/kurtosis/layer_1"]
    assert hit["qkv_input/underflow/layer_1"] > clean["qkv_input/underflow/layer_1"]
    assert hit["qkv_input/saturation/layer_1"] > 0  # above the previous step's amax
    assert hit["qkv_input/kurtosis/layer_0"] == pytest.approx(clean["qkv_input/kurtosis/layer_0"], rel=1e-6)


# ------------------------------------------------------------------------------------------------------ with Trainer
@pytest.fixture(scope="module")
def train_ds(corpus, small_tokenizer):
    from hf_ext.data import pack_dataset

    return pack_dataset(corpus.select(range(60)), small_tokenizer, block_size=32).select(range(64))


def _args(out, **kw):
    base = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=8, learning_rate=3e-3, logging_steps=4,
        save_strategy="no", report_to=[], use_cpu=True, seed=0, data_seed=0, disable_tqdm=True,
        dataloader_num_workers=0, lr_scheduler_type="linear",
    )  # fmt: skip
    base.update(kw)
    return TrainingArguments(**base)


def _trainer(model, args, ds, cb):
    return Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=[cb])


class Blowup:
    """Multiplies one residual-stream element by 1e4 from `start` on, until the callback has rolled back."""

    def __init__(self, model, start, callback):
        self.start, self.callback, self.trainer = start, callback, None
        model.model.layers[1].register_forward_pre_hook(self)

    def __call__(self, module, args):
        if self.trainer is None or self.trainer.state.global_step + 1 < self.start or self.callback.rollbacks:
            return None
        x = args[0].clone()
        x[:, :, 0] = x[:, :, 0] * 1e4
        return (x,)


def test_callback_logs_through_trainer_and_stops_on_blowup(tmp_path, train_ds):
    model = tiny_fog(vocab_size=512)
    cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=1, action="stop", relative_threshold=5.0)
    trainer = _trainer(model, _args(tmp_path, max_steps=12), train_ds, cb)
    blow = Blowup(model, start=7, callback=cb)
    blow.trainer = trainer
    trainer.train()
    logged = [h for h in trainer.state.log_history if "fp8/qkv_input/kurtosis" in h]
    assert logged and logged[0]["step"] == 2
    assert trainer.state.global_step == 8  # first monitored step after the blow-up (7) is 8
    assert cb.alerts and cb.alerts[0]["step"] == 8 and cb.alerts[0]["site"] in ("qkv_input", "activation", "qkv")
    assert any("stopping training at step 8" in a for a in cb.actions_taken)


@pytest.mark.parametrize("trainer_class", ["Trainer", "Fp8Trainer"])
def test_kurtosis_logs_reach_log_history_and_under_fp8trainer_every_callback(tmp_path, train_ds, trainer_class):
    """The `fp8/...` values are in `log_history` with either Trainer; under `Fp8Trainer` also for callbacks that run
    before the health callback, as the reporting integrations (TensorBoard, W&B) do (was: they never saw them)."""
    from transformers import TrainerCallback

    from hf_ext.fp8 import Fp8Trainer

    seen_before, seen_after = [], []

    class Record(TrainerCallback):
        def __init__(self, out):
            self.out = out

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.out.append((state.global_step, "fp8/qkv_input/kurtosis" in logs))

    cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=1)
    cls = Fp8Trainer if trainer_class == "Fp8Trainer" else Trainer
    trainer = cls(
        model=tiny_fog(vocab_size=512), args=_args(tmp_path, max_steps=6), train_dataset=train_ds,
        data_collator=default_data_collator, callbacks=[Record(seen_before), cb, Record(seen_after)],
    )  # fmt: skip
    trainer.train()
    monitored = {h["step"] for h in trainer.state.log_history if "fp8/qkv_input/kurtosis" in h}
    assert monitored == {2, 4, 6}
    assert {step for step, has in seen_after if has} == monitored
    if trainer_class == "Fp8Trainer":
        assert {step for step, has in seen_before if has} == monitored


def test_rollback_refuses_checkpoints_saved_with_save_only_model(tmp_path, train_ds):
    """A rollback resumes from a checkpoint: with save_only_model=True it would go on with a fresh optimizer and a
    restarted LR schedule (a plain Trainer) or fail mid-run; refused before training."""
    cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=1, action="rollback")
    args = _args(tmp_path, save_strategy="steps", save_steps=4, save_only_model=True)
    trainer = _trainer(tiny_fog(vocab_size=512), args, train_ds, cb)
    with pytest.raises(ValueError, match="save_only_model=True checkpoints hold only the weights"):
        train_with_rollback(trainer, cb)
    assert trainer.state.global_step == 0 and not list(tmp_path.glob("checkpoint-*"))


def test_rollback_resumes_from_last_good_checkpoint_with_lower_lr(tmp_path, train_ds, caplog):
    model = tiny_fog(vocab_size=512)
    cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=1, action="rollback", relative_threshold=5.0)
    args = _args(tmp_path, max_steps=12, save_strategy="steps", save_steps=4)
    trainer = _trainer(model, args, train_ds, cb)
    blow = Blowup(model, start=7, callback=cb)
    blow.trainer = trainer
    starts = []

    class Probe(Fp8HealthCallback.__mro__[1]):  # TrainerCallback: weights as each train() call starts
        def on_train_begin(self, args, state, control, model=None, **kw):
            starts.append((state.global_step, {k: v.detach().clone() for k, v in model.state_dict().items()}))

    trainer.add_callback(Probe())
    with caplog.at_level("WARNING"):
        train_with_rollback(trainer, cb)
    assert cb.rollbacks == 1 and cb.lr_scale == 0.5
    # the second train() call started from checkpoint-4's weights and step, not from scratch or the diverged state
    from safetensors.torch import load_file

    assert [step for step, _ in starts] == [0, 4]
    at4 = load_file(os.path.join(tmp_path, "checkpoint-4", "model.safetensors"))
    resumed = starts[1][1]
    assert at4.keys() <= resumed.keys()
    for key, value in at4.items():
        assert torch.equal(resumed[key], value), key
    assert not torch.equal(resumed["model.embed_tokens.weight"], starts[0][1]["model.embed_tokens.weight"])
    assert any("rolling back to" in a and "checkpoint-4" in a for a in cb.actions_taken)
    assert any("learning rate scaled by 0.5" in a for a in cb.actions_taken)
    assert "rolling back to" in caplog.text
    assert trainer.state.global_step == 12
    # the resumed run restarted from step 4 and used half the learning rate of a plain linear schedule
    lr_logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert lr_logged[8] == pytest.approx(0.5 * 3e-3 * (12 - 7) / 12, rel=1e-3)
    with pytest.raises(ValueError, match="save_strategy"):
        train_with_rollback(_trainer(tiny_fog(), _args(tmp_path / "x"), train_ds, Fp8HealthCallback()))


def test_bad_callback_arguments():
    with pytest.raises(ValueError, match="every_n_steps"):
        Fp8HealthCallback(every_n_steps=0)
    with pytest.raises(ValueError, match="action"):
        Fp8HealthCallback(action="explode")
    with pytest.raises(ValueError, match="rollback_lr_factor"):
        Fp8HealthCallback(rollback_lr_factor=2.0)


def test_resume_restores_monitor_baselines_and_delayed_scaling_histories(tmp_path, train_ds):
    def make():
        model = tiny_fog(vocab_size=512)
        convert(model, "emulated", scaling="delayed", amax_history_len=16)
        return model

    full_cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=2)
    full = make()
    _trainer(full, _args(tmp_path / "full", save_strategy="steps", save_steps=4), train_ds, full_cb).train()

    part_dir = tmp_path / "part"
    first_cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=2)
    first = make()
    _trainer(first, _args(part_dir, save_strategy="steps", save_steps=4), train_ds, first_cb).train()
    ckpt = part_dir / "checkpoint-4"
    saved = json.loads((ckpt / "fp8_health.json").read_text())
    assert saved["baseline_obs"] and len(saved["history"]) == 2

    resumed_cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=2)
    resumed = make()
    trainer = _trainer(resumed, _args(part_dir, save_strategy="steps", save_steps=4), train_ds, resumed_cb)
    seen = {}

    class Peek(Fp8HealthCallback.__mro__[1]):  # TrainerCallback
        def on_train_begin(self, args, state, control, model=None, **kw):
            seen["baseline_obs"] = json.loads(json.dumps(resumed_cb.baseline_obs))
            seen["hist"] = model.model.layers[0].self_attn.q_proj.fp8_amax_history.clone()

    trainer.add_callback(Peek())
    trainer.train(resume_from_checkpoint=str(ckpt))
    from safetensors.torch import load_file

    at4 = load_file(os.path.join(ckpt, "model.safetensors"))
    assert seen["baseline_obs"] == saved["baseline_obs"]
    assert torch.equal(seen["hist"], at4["model.layers.0.self_attn.q_proj.fp8_amax_history"])
    assert seen["hist"].abs().sum() > 0
    # continuation equals the uninterrupted run
    assert resumed_cb.baselines == pytest.approx(full_cb.baselines)
    assert [h["step"] for h in resumed_cb.history] == [h["step"] for h in full_cb.history]
    for a, b in zip(resumed.state_dict().items(), full.state_dict().items()):
        torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-6, msg=a[0])


def test_sparse_post_activation_is_judged_relative_to_its_baseline():
    from hf_ext.fp8 import Fp8HealthCallback

    cb = Fp8HealthCallback(every_n_steps=1, baseline_steps=1)

    class _Ctl:
        should_training_stop = False

    # a sparse post-activation site starts high: above 100 but < 10x its baseline -> no alert
    cb._check({"mlp_post_act/kurtosis/layer_0": 40.0}, 1, None, None, _Ctl())
    cb._check({"mlp_post_act/kurtosis/layer_0": 150.0}, 2, None, None, _Ctl())
    assert cb.alerts == []
    # the same value at a near-Gaussian site is an alert (absolute threshold)
    cb._check({"qkv_input/kurtosis/layer_0": 150.0}, 3, None, None, _Ctl())
    assert [a["site"] for a in cb.alerts] == ["qkv_input"]
    # and a 10x jump of the sparse site still fires
    cb._check({"mlp_post_act/kurtosis/layer_0": 500.0}, 4, None, None, _Ctl())
    assert cb.alerts[-1]["site"] == "mlp_post_act"
    import pytest

    with pytest.raises(ValueError, match="absolute_exempt_sites"):
        Fp8HealthCallback(absolute_exempt_sites=("nowhere",))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(patience=float("inf")), "patience"),  # with action="stop" it never stopped
        (dict(baseline_steps=2.5), "baseline_steps"),  # silently needed 3 steps
        (dict(max_rollbacks=0.5), "max_rollbacks"),  # allowed one rollback
        (dict(baseline_steps="3"), "baseline_steps"),  # was a bare TypeError from a comparison
        (dict(relative_threshold="10"), "relative_threshold"),
        (dict(absolute_threshold=float("nan")), "absolute_threshold"),
        (dict(rollback_lr_factor="0.5"), "rollback_lr_factor"),
        (dict(every_n_steps=True), "every_n_steps"),
        (dict(log_per_layer="no"), "log_per_layer"),
    ],
)
def test_callback_counts_and_thresholds_of_the_wrong_type_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=f"Fp8HealthCallback: {name} must be"):
        Fp8HealthCallback(action="stop", **kwargs)


def test_an_infinite_threshold_is_allowed_and_never_alerts():
    cb = Fp8HealthCallback(absolute_threshold=float("inf"), relative_threshold=float("inf"))
    assert cb.absolute_threshold == float("inf")
