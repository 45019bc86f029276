"""Edge cases found in review: delayed scaling after an overflowed amax (Transformer Engine keeps its last scale),
the rollback target under `patience`, bad arguments that used to pass silently or fail obscurely, and an atomic
kurtosis plot."""

import os

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from hf_ext.fp8 import Fp8HealthCallback, Fp8Linear, KurtosisMonitor, convert, plot_kurtosis, train_with_rollback
from hf_ext.fp8.emulation import E4M3, E5M2
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=512, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _fog():
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**TINY))


def _qdq64(x: torch.Tensor, amax: float, dtype: torch.dtype) -> torch.Tensor:
    """float64 reference of one FP8 operand with a per-tensor scale from `amax`."""
    fmax = torch.finfo(dtype).max
    scale = torch.tensor(fmax / amax, dtype=torch.float32)
    return (x.float() * scale).clamp(-fmax, fmax).to(dtype).double() / scale.double()


def _te_delayed_amax(window: list[float], last: float | None, current: float) -> float:
    """Transformer Engine's delayed scaling, "max" algorithm: the window's max, or the last scale's amax when that
    max is not finite (or zero); with neither (first use) the current amax, this project's documented choice."""
    ref = max(window) if window else 0.0
    if 0 < ref < float("inf"):
        return ref
    return last if last is not None else current


def test_delayed_scaling_keeps_the_last_scale_while_an_overflowed_amax_is_in_the_history():
    torch.manual_seed(0)
    lin = Fp8Linear(32, 16, bias=False, scaling="delayed", amax_history_len=4)
    hist = {"x": [], "g": []}
    last = {"x": None, "g": None}
    used_g = []
    for step in range(8):
        x = torch.randn(8, 32, requires_grad=True)
        y = lin(x)
        g = torch.randn_like(y)
        if step == 1:
            g[0, 0] = float("inf")  # one overflowed gradient (an fp16 loss-scaling step, a spike)
        y.backward(g)
        amax = {"x": x.abs().max().item(), "g": g.abs().max().item()}
        used = {}
        for k in ("x", "g"):
            used[k] = last[k] = _te_delayed_amax(hist[k][-4:], last[k], amax[k])
            hist[k].append(amax[k])
        used_g.append(used["g"])
        if step != 1:  # step 1's own gradient holds the inf
            assert torch.isfinite(lin.weight.grad).all() and torch.isfinite(x.grad).all(), step
            ref = _qdq64(g, used["g"], E5M2).t() @ _qdq64(x.detach(), used["x"], E4M3)
            torch.testing.assert_close(lin.weight.grad.double(), ref, rtol=1e-5, atol=1e-6)
        lin.weight.grad = None
    # while the inf is in the 4-step window (steps 2-5) the scale stays step 1's (from step 0's amax)
    assert used_g[2:6] == [hist["g"][0]] * 4 and used_g[6] == max(hist["g"][2:6])
    assert "fp8_scale_amax" in lin.state_dict()


def test_state_dict_saved_before_fp8_scale_amax_loads_strictly_and_resets_the_kept_scale(tmp_path):
    """Checkpoints of the emulated backend written before `fp8_scale_amax` existed failed `load_state_dict` with
    `strict=True` (missing key), and a non-strict load (Trainer resume, rollback) kept the live module's value instead
    of the checkpoint's state (no kept scale). Such a state dict now loads, with the fresh module's zeros."""
    from safetensors.torch import load_file, save_file

    trained = _fog()
    convert(trained, "emulated", scaling="delayed", amax_history_len=4)
    ids = torch.randint(0, 512, (2, 8))
    for _ in range(2):
        trained(input_ids=ids, labels=ids).loss.backward()
    old = {k: v for k, v in trained.state_dict().items() if not k.endswith("fp8_scale_amax")}
    assert len(old) < len(trained.state_dict())
    save_file({k: v.contiguous() for k, v in old.items() if k != "lm_head.weight"}, str(tmp_path / "old.safetensors"))
    target = _fog()
    convert(target, "emulated", scaling="delayed", amax_history_len=4)
    target(input_ids=ids, labels=ids).loss.backward()  # a live, non-zero kept scale that the load must replace
    lin = target.model.layers[0].self_attn.q_proj
    assert lin.fp8_scale_amax.abs().sum() > 0
    loaded = load_file(str(tmp_path / "old.safetensors"))
    target.load_state_dict(loaded, strict=False)  # lm_head is tied (not in the safetensors file)
    assert lin.fp8_scale_amax.abs().sum() == 0
    torch.testing.assert_close(lin.fp8_amax_history, trained.model.layers[0].self_attn.q_proj.fp8_amax_history)
    # torch.save format: the old module version (1, the default before the buffer) is in the metadata
    sd = trained.state_dict()
    for key in [k for k in sd if k.endswith("fp8_scale_amax")]:
        del sd[key]
    for module_key, meta in sd._metadata.items():
        if isinstance(trained.get_submodule(module_key) if module_key else trained, Fp8Linear):
            meta["version"] = 1
    target.load_state_dict(sd, strict=True)
    assert lin.fp8_scale_amax.abs().sum() == 0
    # a state dict of a plain (unconverted) model still reports both missing buffers
    plain = _fog().state_dict()
    with pytest.raises(RuntimeError, match="fp8_amax_history"):
        target.load_state_dict(plain, strict=True)


def test_delayed_scaling_after_a_nan_amax_uses_the_finite_history_as_transformer_engine_does():
    # TE ignores NaN entries in the "max" over the history (fmaxf) and keeps its last scale for "most_recent"; both
    # give step 0's amax here, where a NaN reference used to fall back to the current tensor's amax
    for algo in ("max", "most_recent"):
        torch.manual_seed(0)
        lin = Fp8Linear(16, 16, bias=False, scaling="delayed", amax_history_len=4, amax_compute_algo=algo)
        x0 = torch.randn(4, 16)
        lin(x0)
        x1 = torch.randn(4, 16)
        x1[0, 0] = float("nan")
        lin(x1)  # NaN output rows this step; a NaN amax enters the history
        x2 = 5 * torch.randn(4, 16)
        out = lin(x2)
        w_amax = lin.weight.abs().max().item()
        ref = _qdq64(x2, x0.abs().max().item(), E4M3) @ _qdq64(lin.weight.detach(), w_amax, E4M3).t()
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6, msg=algo)


@pytest.fixture(scope="module")
def train_ds(corpus, small_tokenizer):
    from hf_ext.data import pack_dataset

    return pack_dataset(corpus.select(range(60)), small_tokenizer, block_size=32).select(range(64))


def test_rollback_with_patience_goes_before_the_first_alert_of_the_streak(tmp_path, train_ds):
    model = _fog()
    cb = Fp8HealthCallback(every_n_steps=2, baseline_steps=1, action="rollback", relative_threshold=5.0, patience=2)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=12, learning_rate=3e-3, report_to=[],
        use_cpu=True, seed=0, save_strategy="steps", save_steps=2, disable_tqdm=True, logging_steps=100,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator, callbacks=[cb]
    )

    def blowup(module, inputs):  # diverges from step 7 on, until rolled back
        if trainer.state.global_step + 1 < 7 or cb.rollbacks:
            return None
        x = inputs[0].clone()
        x[:, :, 0] *= 1e4
        return (x,)

    model.model.layers[1].register_forward_pre_hook(blowup)
    starts = []

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            starts.append((state.global_step, cb._streak))

    trainer.add_callback(Probe())
    train_with_rollback(trainer, cb)
    assert sorted({a["step"] for a in cb.alerts}) == [8, 10]  # the streak: first alert 8, rollback at 10
    # checkpoint-8 was saved after the first alert (its state already diverging, its streak 1): go to checkpoint-6
    assert any(f"rolling back to {os.path.join(str(tmp_path), 'checkpoint-6')} " in a for a in cb.actions_taken)
    assert starts == [(0, 0), (6, 0)]
    assert trainer.state.global_step == 12


def test_bad_arguments_are_named_before_anything_changes():
    with pytest.raises(ValueError, match="alert_sites"):
        Fp8HealthCallback(alert_sites=["qkv_inputs"])  # a typo used to silence every alert
    with pytest.raises(ValueError, match=r"sites=\['qk'\]"):
        Fp8HealthCallback(sites="qk")
    with pytest.raises(ValueError, match="alert_sites .*not monitored"):
        Fp8HealthCallback(sites=["qkv"], alert_sites=["mlp_out"])
    Fp8HealthCallback(sites=["qkv", "mlp_out"], alert_sites=["mlp_out"])
    for kw in ({"amax_history_len": 2.5}, {"amax_history_len": 0}, {"margin": 0.5}, {"margin": -1}):
        name = next(iter(kw))
        with pytest.raises(ValueError, match=name):
            Fp8Linear(16, 16, **kw)
        model = _fog()
        with pytest.raises(ValueError, match=f"convert: {name}"):
            convert(model, "emulated", **kw)
        assert not hasattr(model, "hf_ext_fp8")
    for skip, match in (("down_proj", r"skip_modules=\['down_proj'\]"), (["("], "not a valid regular expression")):
        model = _fog()
        with pytest.raises(ValueError, match=match):
            convert(model, "emulated", skip_modules=skip)
        assert not hasattr(model, "hf_ext_fp8")
    convert(_fog(), "emulated", margin=1, amax_history_len=8, skip_modules=["down_proj"])
    with pytest.raises(ValueError, match=r"sites=\['qk'\]"):
        KurtosisMonitor(_fog(), sites="qk")  # used to monitor 'q' and 'k'
    KurtosisMonitor(_fog(), sites=["qkv"])


def test_plot_kurtosis_never_leaves_a_half_written_png(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    path = tmp_path / "kurtosis.png"
    history = [{"step": 1, "qkv/kurtosis/avg": 3.0}, {"step": 2, "qkv/kurtosis/avg": 3.5}]
    plot_kurtosis(history, str(path))
    good = path.read_bytes()
    assert good.startswith(b"\x89PNG")

    def interrupted(self, fname, **kw):  # the disk fills up halfway through
        fh = open(fname, "wb") if isinstance(fname, (str, os.PathLike)) else fname
        fh.write(b"\x89PN")
        fh.flush()
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", interrupted)
    with pytest.raises(OSError, match="No space"):
        plot_kurtosis(history, str(path))
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["kurtosis.png"]


def test_underflow_is_the_fraction_of_non_zero_elements_an_e4m3_cast_flushes():
    class Block(torch.nn.Module):  # a ReLU MLP: half of the post-activation elements are exact zeros
        def __init__(self):
            super().__init__()
            self.mlp = torch.nn.Module()
            self.mlp.act_fn = torch.nn.ReLU()

        def forward(self, x):
            return self.mlp.act_fn(x)

    blocks = torch.nn.ModuleList([Block()])
    monitor = KurtosisMonitor(blocks, sites=["mlp_post_act"], layers=list(blocks))
    torch.manual_seed(0)
    x = torch.randn(2, 64, 32) * 1e-4
    x[0, 0, 0] = x[1, 0, 0] = 448.0  # the outlier that sets the per-tensor scale (1.0)
    x[:, 1, :3] = 2.0**-10  # exactly half the smallest E4M3 subnormal: ties to even, to 0
    with torch.no_grad(), monitor.active():
        blocks[0](x)
    stats = monitor.collect()
    post = torch.relu(x).double()
    scale = 448 / post.abs().max()
    nonzero = post != 0
    flushed = nonzero & ((post * scale).float().to(E4M3).float() == 0)
    assert 0.3 < 1 - nonzero.double().mean().item() < 0.7
    expected = flushed.sum().item() / nonzero.sum().item()
    assert expected > 0.9
    assert stats["mlp_post_act/underflow/layer_0"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(recipe="nonsense"), "recipe='nonsense'"),
        (dict(emulate=True), "emulate=True is a torchao option"),
        (dict(fsdp_float8_all_gather=True), "fsdp_float8_all_gather=True is a torchao option"),
        (dict(amax_reduction_group=object(), scaling="current"), "amax_reduction_group is a delayed-scaling option"),
        (dict(amax_reduction_group=object(), backend="torchao"), "amax_reduction_group is a delayed-scaling option"),
    ],
)
def test_options_of_another_backend_are_refused_not_ignored(kwargs, match):
    model = _fog()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"backend": "emulated", **kwargs}
    with pytest.raises(ValueError, match=match):
        convert(model, **kwargs)
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
