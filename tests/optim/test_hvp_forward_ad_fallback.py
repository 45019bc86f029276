"""Hessian-vector products where torch's forward-mode AD fails on the loss: `F.mse_loss` (every regression head's
loss) raises "ZeroTensors are immutable" under `jvp(grad(f))` in torch 2.13, `F.huber_loss` has no forward-mode
derivative. `CubicNewton`'s HVP-based Hessians (`fresh`, `window`) crashed on the first step, and
`CubicNewtonTrainer` had no option to take another mode; now `hvp_mode="auto"` (the default) falls back to double
backward, and `--cubic_hvp_mode` sets the mode."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from hf_ext.optim import CubicNewton, hessian_vector_product
from hf_ext.optim.cubic_newton import make_flat_loss

LOSSES = {"mse": F.mse_loss, "huber": lambda out, y: F.huber_loss(out, y, delta=0.5)}


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 2, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_auto_mode_takes_the_hvp_by_double_backward_where_forward_ad_fails(loss):
    net, (x, y) = _net(), _data()
    f, flat = make_flat_loss(net, {"input": x}, loss_fn=lambda out, b: LOSSES[loss](out, y))
    w = flat.flatten()
    v = torch.randn(w.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with pytest.warns(UserWarning, match="forward-mode AD failed"):
        hv = hessian_vector_product(f, w, v)  # default mode "auto"
    # independent: central differences of the reverse-mode gradient (float64)
    eps = 1e-6
    fd = (torch.func.grad(f)(w + eps * v) - torch.func.grad(f)(w - eps * v)) / (2 * eps)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(hv, hessian_vector_product(f, w, v, "double_backward"), rtol=0, atol=0)


def test_auto_mode_keeps_forward_over_reverse_where_it_works():
    net, (x, y) = _net(), _data()
    f, flat = make_flat_loss(net, {"input": x}, loss_fn=lambda out, b: ((out - y) ** 2).mean())
    w = flat.flatten()
    v = torch.ones_like(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hv = hessian_vector_product(f, w, v)
    torch.testing.assert_close(hv, hessian_vector_product(f, w, v, "forward_over_reverse"), rtol=0, atol=0)


@pytest.mark.parametrize("hessian", ["fresh", "window"])
def test_cubic_newton_with_hvp_hessians_steps_on_an_mse_loss(hessian):
    (x, y) = _data()
    runs = {}
    for mode in ("auto", "double_backward"):
        net = _net()
        opt = CubicNewton(net.parameters(), M=5.0, hessian=hessian, solver="lanczos", krylov_dim=4, hvp_mode=mode)
        losses = []
        for step in range(3):
            xs, ys = x[step::3], y[step::3]
            f, _ = make_flat_loss(net, {"input": xs}, loss_fn=lambda out, b, ys=ys: F.mse_loss(out, ys))
            losses.append(float(f(torch.cat([p.detach().reshape(-1) for p in net.parameters()]))))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                opt.step(lambda f=f: f)
            if mode == "auto":  # one failed forward-mode attempt, on the first HVP of the run only
                assert len([w for w in caught if "forward-mode AD failed" in str(w.message)]) == (step == 0)
        runs[mode] = ([p.detach().clone() for p in net.parameters()], losses)
    for a, b in zip(runs["auto"][0], runs["double_backward"][0]):
        assert torch.equal(a, b)
    assert runs["auto"][0][0].ne(_net().state_dict()["0.weight"]).any()  # it did step


def test_cubic_newton_trainer_trains_a_regression_head_and_passes_cubic_hvp_mode(tmp_path):
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments

    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=1, problem_type="regression", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    ds = Dataset.from_dict(
        {
            "input_ids": torch.randint(0, 50, (8, 6), generator=g).tolist(),
            "labels": torch.randn(8, generator=g).tolist(),
        }
    )
    finals = {}
    for mode in ("auto", "double_backward"):
        torch.manual_seed(0)
        model = BertForSequenceClassification._from_config(cfg, attn_implementation="eager")
        args = CubicNewtonTrainingArguments(output_dir=str(tmp_path / mode), max_steps=2, per_device_train_batch_size=4,
                                            report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                                            cubic_hvp_mode=mode, seed=0)  # fmt: skip
        assert args.cubic_newton_kwargs()["hvp_mode"] == mode
        trainer = CubicNewtonTrainer(model=model, args=args, train_dataset=ds)
        trainer.train()  # crashed on the first step: "ZeroTensors are immutable"
        assert trainer.optimizer.param_groups[0]["hvp_mode"] == mode
        finals[mode] = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in finals["auto"].items():
        torch.testing.assert_close(value, finals["double_backward"][key], rtol=0, atol=0, msg=key)
    with pytest.raises(ValueError, match="hvp_mode"):
        CubicNewtonTrainingArguments(output_dir=str(tmp_path / "x"), cubic_hvp_mode="forward", use_cpu=True)


def test_cubic_newton_defaults_to_auto_and_steps_on_an_mse_loss():
    net, (x, y) = _net(), _data()
    opt = CubicNewton(net.parameters(), M=5.0, hessian="fresh", solver="lanczos", krylov_dim=4)  # default hvp_mode
    assert opt.param_groups[0]["hvp_mode"] == "auto"
    f, _ = make_flat_loss(net, {"input": x}, loss_fn=lambda out, b: F.mse_loss(out, y))
    with pytest.warns(UserWarning, match="forward-mode AD failed"):
        opt.step(lambda: f)


def test_a_resumed_optimizer_keeps_to_double_backward_once_auto_fell_back():
    """The fallback was not in `state_dict()`: a resumed run tried forward-mode AD again on its first step (a failed
    attempt and the warning once more), unlike the uninterrupted run. The flag is now saved and restored."""
    (x, y) = _data()

    def step(opt, net, k):
        f, _ = make_flat_loss(net, {"input": x[k::3]}, loss_fn=lambda out, b: F.mse_loss(out, y[k::3]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step(lambda: f)
        return [w for w in caught if "forward-mode AD failed" in str(w.message)]

    def make(net):
        return CubicNewton(net.parameters(), M=5.0, hessian="fresh", solver="lanczos", krylov_dim=4)

    net = _net()
    opt = make(net)
    assert len(step(opt, net, 0)) == 1
    saved = opt.state_dict()
    assert saved["hvp_double_backward"] is True
    resumed_net = _net()
    resumed_net.load_state_dict(net.state_dict())
    resumed = make(resumed_net)
    resumed.load_state_dict(saved)
    assert step(resumed, resumed_net, 1) == []  # was: a second failed forward-mode attempt and its warning
    assert step(opt, net, 1) == []
    for a, b in zip(net.parameters(), resumed_net.parameters()):
        assert torch.equal(a, b)
    plain = make(_net())
    assert plain.state_dict()["hvp_double_backward"] is False
    del saved["hvp_double_backward"]  # a state saved by an older hf_ext loads (and tries forward mode again)
    older = make(_net())
    older.load_state_dict(saved)
    assert older._hvp_double_backward is False
