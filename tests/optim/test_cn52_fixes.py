"""cn52: Hessian-vector products by double backward of a loss whose gradient does not depend on the parameters
(constant or linear in them, Hessian 0) raised torch's "element 0 of tensors does not require grad and does not have a
grad_fn" (`hvp_mode="double_backward"`, and `"auto"` once it fell back to it), where forward-over-reverse gives 0."""

import pytest
import torch

from hf_ext.optim.cubic_newton import CubicNewton, dense_hessian, hessian_vector_product


def _linear(x):
    return (torch.arange(1.0, x.numel() + 1, dtype=x.dtype) * x).sum()


def _constant(x):
    return torch.tensor(2.0, dtype=x.dtype)


@pytest.mark.parametrize("fn", [_linear, _constant], ids=["linear", "constant"])
@pytest.mark.parametrize("mode", ["double_backward", "forward_over_reverse", "auto"])
def test_hvp_and_dense_hessian_of_a_function_without_curvature_are_zero(fn, mode):
    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64)
    assert torch.equal(hessian_vector_product(fn, x, v, mode), torch.zeros(3, dtype=torch.float64))
    H, _ = dense_hessian(fn, x, mode)
    assert torch.equal(H.reshape(3, 3), torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("hessian,solver", [("fresh", "lanczos"), ("fresh", "gd"), ("dense", "exact")])
def test_cubic_step_on_a_linear_loss_is_the_same_with_double_backward(hessian, solver):
    steps = {}
    for mode in ("forward_over_reverse", "double_backward"):
        p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
        opt = CubicNewton([p], M=2.0, hessian=hessian, solver=solver, hvp_mode=mode, gd_iters=50)
        opt.step(lambda: _linear)
        steps[mode] = p.detach().clone()
    # m(h) = g.h + M/6 |h|^3 with g = (1, 2, 3): h = -sqrt(2 |g| / M) g / |g|
    g = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    expected = -((2 * g.norm() / 2.0) ** 0.5) * g / g.norm()
    torch.testing.assert_close(steps["double_backward"], steps["forward_over_reverse"], rtol=1e-12, atol=1e-14)
    # the gd solver stops at its tolerance (1e-6 of |g| on the model's gradient)
    torch.testing.assert_close(steps["double_backward"], expected, rtol=1e-5 if solver == "gd" else 1e-9, atol=0.0)


class _NormNet(torch.nn.Module):
    def __init__(self, norm: torch.nn.Module):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.norm = norm
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x, labels):
        logits = self.head(self.norm(self.lin(x)))
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


def _trainer(tmp_path, model):
    from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments

    args = CubicNewtonTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1, cubic_krylov_dim=3, save_strategy="no"
    )
    return CubicNewtonTrainer(model=model, args=args)


def test_trainer_warns_that_batch_norm_running_statistics_stay_frozen(tmp_path):
    """Each cubic step runs the model in eval mode: a BatchNorm layer normalises with its running statistics and never
    updates them (a fresh layer keeps mean 0, variance 1 and does not normalise). That used to pass without a word."""
    with pytest.warns(UserWarning, match=r"1 normalisation layers with running statistics \(norm\)"):
        _trainer(tmp_path, _NormNet(torch.nn.BatchNorm1d(4)))


@pytest.mark.parametrize(
    "norm",
    [torch.nn.LayerNorm(4), torch.nn.BatchNorm1d(4, track_running_stats=False)],
    ids=["layer_norm", "batch_norm_without_running_stats"],
)
def test_trainer_does_not_warn_without_running_statistics(tmp_path, norm, recwarn):
    _trainer(tmp_path, _NormNet(norm))
    assert not [w for w in recwarn if "running statistics" in str(w.message)]
