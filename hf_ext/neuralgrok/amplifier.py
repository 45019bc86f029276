"""The NeuralGrok amplifier G_phi and its outer (meta) update."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn


class NeuralAmplifier(nn.Module):
    r"""
    Learned gradient transform of NeuralGrok: for every parameter tensor with gradient `g` (flattened to `n`
    scalars),

        s = MLP(g)                  # one scalar-in/scalar-out MLP applied to every entry
        p = softmax(s over all n entries of the tensor)
        g' = c * (p * g) / ||p * g||

    so each tensor's transformed gradient has l2 norm exactly `c`, with a learned re-weighting of its coordinates.

    Args:
        hidden_dims (`Sequence[int]`, *optional*, defaults to `(32, 32)`):
            Hidden widths of the MLP `1 -> h_1 -> ... -> h_k -> 1` (ReLU between layers). `(32, 32)` is the paper's
            "3-layer MLP, hidden 32"; the final reference code uses `(64, 128, 64)`, which costs ~15x more per entry.
        c (`float`, *optional*, defaults to 1.0):
            Norm of each transformed gradient tensor (the paper uses 1.0; the reference code defaults to 0.2).
        softmax_dim (`int`, *optional*, defaults to 0):
            0 normalises over all entries of a tensor (the method). -1 reproduces a bug of an intermediate reference
            commit: the softmax runs over a width-1 axis, `p == 1`, and the transform collapses to plain per-tensor
            gradient normalisation. Only for ablations.
        dropout (`float`, *optional*, defaults to 0.0): dropout after each hidden ReLU (the final code uses none).
        eps (`float`, *optional*, defaults to 1e-30): floor of `||p * g||` (an all-zero gradient stays zero).
        chunk_size (`int`, *optional*, defaults to 262144): entries per MLP call when no graph is built (the inner
            transform), which bounds its activation memory on large tensors.
    """

    def __init__(
        self,
        hidden_dims: Sequence[int] = (32, 32),
        c: float = 1.0,
        softmax_dim: int = 0,
        dropout: float = 0.0,
        eps: float = 1e-30,
        chunk_size: int = 262144,
    ):
        super().__init__()
        hidden_dims = tuple(hidden_dims)
        if not hidden_dims or any(not isinstance(h, int) or isinstance(h, bool) or h <= 0 for h in hidden_dims):
            raise ValueError(
                f"hidden_dims={hidden_dims!r} must be a non-empty sequence of positive ints, e.g. (32, 32)."
            )
        if not c > 0:
            raise ValueError(f"c={c} must be > 0 (the norm of each transformed gradient tensor).")
        if softmax_dim not in (0, -1):
            raise ValueError(f"softmax_dim={softmax_dim} must be 0 (the method) or -1 (the ablation bug).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout} must be in [0, 1).")
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size} must be a positive number of entries.")
        self.hidden_dims = hidden_dims
        self.c = float(c)
        self.softmax_dim = softmax_dim
        self.eps = eps
        self.chunk_size = int(chunk_size)
        layers: list[nn.Module] = []
        prev = 1
        for width in hidden_dims:
            layers += [nn.Linear(prev, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            prev = width
        layers.append(nn.Linear(prev, 1))
        self.net = nn.Sequential(*layers)

    @property
    def macs_per_entry(self) -> int:
        """Multiply-accumulates of one MLP evaluation (one gradient entry)."""
        dims = (1, *self.hidden_dims, 1)
        return sum(a * b for a, b in zip(dims[:-1], dims[1:]))

    def probabilities(self, grad: torch.Tensor) -> torch.Tensor:
        """The softmax weights `p` for `grad` (same shape; they sum to 1 over the tensor when `softmax_dim=0`)."""
        column = grad.reshape(-1, 1).to(self.net[0].weight.dtype)
        if torch.is_grad_enabled() or column.shape[0] <= self.chunk_size:
            scores = self.net(column)
        else:
            # Without a graph, evaluate the MLP in chunks: peak memory ~chunk_size * max(hidden_dims) floats.
            scores = torch.cat([self.net(part) for part in column.split(self.chunk_size)])
        return torch.softmax(scores, dim=self.softmax_dim).view_as(grad)

    def forward(self, grad: torch.Tensor) -> torch.Tensor:
        """Transform one gradient tensor; the result has the same shape and dtype and l2 norm `c`."""
        p = self.probabilities(grad)
        weighted = p * grad.to(p.dtype)
        norm = torch.linalg.vector_norm(weighted).clamp_min(self.eps)
        return (self.c * weighted / norm).to(grad.dtype)

    @torch.no_grad()
    def transform_(self, params: Iterable[torch.Tensor]) -> int:
        """Replace `param.grad` by its transform, in place and without autograd graph. Returns the tensors changed."""
        count = 0
        for param in params:
            if param.grad is None:
                continue
            param.grad.copy_(self(param.grad))
            count += 1
        return count


def amplifier_outer_step(
    amplifier: NeuralAmplifier,
    meta_optimizer: torch.optim.Optimizer,
    model: nn.Module,
    inner_batches: Sequence[Mapping[str, torch.Tensor]],
    outer_batches: Sequence[Mapping[str, torch.Tensor]],
    virtual_lr: float,
    loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor] | None = None,
    outer_loss_fn: Callable[[nn.Module, Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], torch.Tensor]
    | None = None,
    grad_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    r"""
    One Learn-Amplifier step: update `amplifier` so that a virtual SGD step with its transformed gradients lowers the
    loss on the outer set. The model parameters are never modified.

    With the model at theta (after the real optimizer step):

    1. `g_hat = grad L(theta; inner_batches)` (constants),
    2. `theta' = theta.detach() - virtual_lr * G_phi(g_hat)` for every trainable tensor (differentiable in phi),
    3. `L_outer = mean loss of the model at theta'` over all `outer_batches`, through `torch.func.functional_call`,
    4. backpropagate into phi only and take a `meta_optimizer` step.

    Args:
        amplifier ([`NeuralAmplifier`]): the amplifier to train.
        meta_optimizer (`torch.optim.Optimizer`): optimizer over `amplifier.parameters()` only.
        model (`nn.Module`): the (unwrapped) model; its forward returns an output with a `loss` (or pass `loss_fn`).
        inner_batches: the micro-batches of the last inner step (their mean loss gives `g_hat`).
        outer_batches: batches of the outer set D_outer; `L_outer` is their example-weighted mean loss.
        virtual_lr (`float`): step size of the virtual SGD step (the reference uses the base learning rate).
        loss_fn (`Callable`, *optional*): `loss_fn(model, batch) -> scalar`; defaults to `model(**batch).loss`.
        outer_loss_fn (`Callable`, *optional*): `outer_loss_fn(model, params, batch) -> scalar` for the outer loss;
            defaults to `functional_call(model, params, kwargs=batch).loss`.
        grad_reducer (`Callable`, *optional*): applied to each amplifier gradient before the meta step (e.g. a mean
            over data-parallel ranks).

    Returns:
        `float`: the outer loss (before the meta step).
    """
    from torch.func import functional_call

    if not inner_batches:
        raise ValueError("inner_batches is empty: the outer step needs the batch of the last inner step.")
    if not outer_batches:
        raise ValueError("outer_batches is empty: pass a non-empty outer dataset (D_outer).")
    if not virtual_lr > 0:
        raise ValueError(f"virtual_lr={virtual_lr} must be > 0.")
    if loss_fn is None:

        def loss_fn(m, batch):
            return m(**batch).loss

    if outer_loss_fn is None:

        def outer_loss_fn(m, params, batch):
            return functional_call(m, params, args=(), kwargs=dict(batch)).loss

    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    # 1. g_hat at the current parameters, on the last inner batch (no .grad is touched).
    with torch.enable_grad():
        inner_loss = sum(loss_fn(model, batch) for batch in inner_batches) / len(inner_batches)
        g_hat = torch.autograd.grad(inner_loss, params, allow_unused=True)
    # 2.-3. virtual step and outer loss, differentiable in phi only.
    amplifier.train()
    meta_optimizer.zero_grad(set_to_none=True)
    with torch.enable_grad():
        virtual = {}
        for name, param, grad in zip(names, params, g_hat):
            theta = param.detach()
            virtual[name] = theta if grad is None else theta - virtual_lr * amplifier(grad.detach())
        buffers = dict(model.named_buffers())
        total_examples = 0
        outer_loss = 0.0
        for batch in outer_batches:
            n = _batch_size(batch)
            outer_loss = outer_loss + n * outer_loss_fn(model, {**virtual, **buffers}, batch)
            total_examples += n
        outer_loss = outer_loss / total_examples
        outer_loss.backward()
    if grad_reducer is not None:
        for phi in amplifier.parameters():
            if phi.grad is not None:
                phi.grad.copy_(grad_reducer(phi.grad))
    meta_optimizer.step()
    amplifier.eval()
    return float(outer_loss.detach())


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("Cannot infer the batch size: no tensor with a batch dimension in the outer batch.")
