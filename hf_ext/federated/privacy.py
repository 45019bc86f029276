"""Record-level differential privacy for (LoRA) fine-tuning: per-sample gradients with `torch.func`, clipping,
Gaussian noise, and a Renyi-DP accountant for the Poisson-subsampled Gaussian mechanism."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch

DEFAULT_RDP_ORDERS = tuple(range(2, 257))


def _log_add(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def subsampled_gaussian_rdp(sample_rate: float, noise_multiplier: float, order: int) -> float:
    """RDP of one step of the Poisson-subsampled Gaussian mechanism at integer order `order` (Mironov et al. 2019):

    `log( sum_k C(a, k) (1-q)^(a-k) q^k exp((k^2 - k) / (2 sigma^2)) ) / (a - 1)`,

    which for `q = 1` is the Gaussian mechanism's `a / (2 sigma^2)`.
    """
    if not 0 <= sample_rate <= 1:
        raise ValueError(f"`sample_rate` must be in [0, 1], got {sample_rate}.")
    if isinstance(order, bool) or int(order) != order or order < 2:
        raise ValueError(f"`order` must be an integer >= 2, got {order}.")
    if noise_multiplier <= 0:
        return math.inf
    if sample_rate == 0:
        return 0.0
    a, q, s2 = int(order), float(sample_rate), float(noise_multiplier) ** 2
    if q == 1.0:
        return a / (2 * s2)
    log_a = -math.inf
    for k in range(a + 1):
        term = (
            math.lgamma(a + 1)
            - math.lgamma(k + 1)
            - math.lgamma(a - k + 1)
            + (a - k) * math.log1p(-q)
            + k * math.log(q)
            + (k * k - k) / (2 * s2)
        )
        log_a = _log_add(log_a, term)
    return log_a / (a - 1)


class RDPAccountant:
    """Composes steps of the subsampled Gaussian mechanism and converts RDP to `(epsilon, delta)`-DP.

    The conversion is the tight one of Balle et al. 2020 (as in Opacus):
    `eps = rdp(a) + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1)`, minimised over orders.
    The state is a JSON-serialisable list of `(sample_rate, noise_multiplier, steps)` entries.
    """

    def __init__(self, orders: Sequence[int] = DEFAULT_RDP_ORDERS):
        if not orders:
            raise ValueError("`orders` must not be empty.")
        self.orders = tuple(int(a) for a in orders)
        self.history: list[tuple[float, float, int]] = []

    def step(self, sample_rate: float, noise_multiplier: float, num_steps: int = 1) -> None:
        """Record `num_steps` steps with the given sampling rate and noise multiplier."""
        if num_steps < 0:
            raise ValueError(f"`num_steps` must be >= 0, got {num_steps}.")
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"`sample_rate` must be in [0, 1], got {sample_rate}.")
        if noise_multiplier < 0:
            raise ValueError(f"`noise_multiplier` must be >= 0, got {noise_multiplier}.")
        if num_steps == 0:
            return
        if self.history and self.history[-1][:2] == (float(sample_rate), float(noise_multiplier)):
            q, s, n = self.history[-1]
            self.history[-1] = (q, s, n + int(num_steps))
        else:
            self.history.append((float(sample_rate), float(noise_multiplier), int(num_steps)))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def rdp(self) -> list[float]:
        return [sum(n * subsampled_gaussian_rdp(q, s, a) for q, s, n in self.history) for a in self.orders]

    def get_epsilon(self, delta: float) -> float:
        """The smallest epsilon over orders such that the recorded steps are `(epsilon, delta)`-DP."""
        if not 0 < delta < 1:
            raise ValueError(f"`delta` must be in (0, 1), got {delta}.")
        if not self.history:
            return 0.0
        best = math.inf
        for a, r in zip(self.orders, self.rdp()):
            if math.isinf(r):
                continue
            eps = r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
            best = min(best, eps)
        return max(best, 0.0)

    def state_dict(self) -> dict:
        return {"orders": list(self.orders), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: Mapping) -> None:
        if "history" not in state:
            raise ValueError("Accountant state must have a `history` entry.")
        self.orders = tuple(int(a) for a in state.get("orders", self.orders))
        self.history = [(float(q), float(s), int(n)) for q, s, n in state["history"]]

    def to_json(self) -> str:
        return json.dumps(self.state_dict())


def per_sample_gradients(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-sample gradients of the causal-LM loss for the parameters with `requires_grad` (e.g. only LoRA).

    Uses `torch.func.vmap(grad(...))` over `functional_call`, so the cost is one batched forward/backward. Each
    sample's loss is the mean next-token cross-entropy over its labels that are not -100. Build models with
    `attn_implementation="eager"` for speed under `vmap`.

    Returns:
        `tuple[dict[str, torch.Tensor], torch.Tensor]`: gradients with a leading batch dimension, and the per-sample
        losses.
    """
    from torch.func import functional_call, grad, vmap

    if input_ids.dim() != 2 or labels.shape != input_ids.shape:
        raise ValueError(
            f"`input_ids` and `labels` must both have shape (batch, length), got {tuple(input_ids.shape)} and "
            f"{tuple(labels.shape)}."
        )
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("The model has no trainable parameter (nothing requires grad).")
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_fn(p, ids, lab, mask):
        kwargs = {"input_ids": ids[None]}
        if mask is not None:
            kwargs["attention_mask"] = mask[None]
        out = functional_call(model, (p, buffers), args=(), kwargs=kwargs, strict=False)
        logits = out.logits[0, :-1].float()
        target = lab[1:]
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
        mean = loss / (target != -100).sum().clamp(min=1)
        return mean, mean.detach()

    def g(p, ids, lab, mask):
        grads, loss = grad(loss_fn, has_aux=True)(p, ids, lab, mask)
        return grads, loss

    in_mask = None if attention_mask is None else 0
    grads, losses = vmap(g, in_dims=(None, 0, 0, in_mask), randomness="different")(
        params, input_ids, labels, attention_mask
    )
    return grads, losses


def clip_per_sample(
    grads: Mapping[str, torch.Tensor], max_norm: float
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip every sample's gradient (over all parameters together) to L2 norm `max_norm`.

    Returns:
        `tuple[dict[str, torch.Tensor], torch.Tensor]`: the clipped per-sample gradients and the original norms.
    """
    if not max_norm > 0:
        raise ValueError(f"`max_norm` must be > 0, got {max_norm}.")
    if not grads:
        raise ValueError("`grads` is empty.")
    first = next(iter(grads.values()))
    norms = torch.zeros(first.shape[0], dtype=torch.float32, device=first.device)
    for g in grads.values():
        norms = norms + g.reshape(g.shape[0], -1).float().pow(2).sum(dim=1)
    norms = norms.sqrt()
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    clipped = {n: g * factor.view(-1, *([1] * (g.dim() - 1))).to(g.dtype) for n, g in grads.items()}
    return clipped, norms


def noisy_sum(
    clipped: Mapping[str, torch.Tensor],
    max_norm: float,
    noise_multiplier: float,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Sum clipped per-sample gradients and add `N(0, (noise_multiplier * max_norm)^2)` to every coordinate."""
    if noise_multiplier < 0:
        raise ValueError(f"`noise_multiplier` must be >= 0, got {noise_multiplier}.")
    std = noise_multiplier * max_norm
    out = {}
    for n, g in clipped.items():
        s = g.sum(dim=0)
        if std > 0:
            s = s + torch.normal(0.0, std, size=s.shape, generator=generator, device=s.device, dtype=s.dtype)
        out[n] = s
    return out


def dp_gradient(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    max_norm: float,
    noise_multiplier: float,
    expected_batch_size: int | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One DP-SGD gradient: `(sum_i clip(g_i) + N(0, sigma^2 C^2)) / B` for the trainable parameters.

    Returns:
        `tuple[dict[str, torch.Tensor], torch.Tensor]`: the privatised gradient per trainable parameter name and the
        per-sample losses.
    """
    grads, losses = per_sample_gradients(model, input_ids, labels, attention_mask)
    clipped, _ = clip_per_sample(grads, max_norm)
    summed = noisy_sum(clipped, max_norm, noise_multiplier, generator)
    b = expected_batch_size or input_ids.shape[0]
    return {n: g / b for n, g in summed.items()}, losses
