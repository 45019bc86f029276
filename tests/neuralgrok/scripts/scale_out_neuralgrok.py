"""2 gloo ranks on CPU: NeuralGrok's gradient transforms under FSDP2 (`fully_shard`) and DDP give the parameters (and
the logged gradient statistics) of one process on the concatenated batch; the outer step with the trainer's DDP
reducers matches one process; the outer step refuses FSDP2-sharded models.

Usage: scale_out_neuralgrok.py OUT_DIR (writes OUT_DIR/scale_out_neuralgrok.json on rank 0)."""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from hf_ext.neuralgrok import GradFilterOptimizer, GradNormOptimizer, NeuralAmplifier, NeuralGrokOptimizer
from hf_ext.neuralgrok.amplifier import amplifier_outer_step
from hf_ext.utils.distributed import gather_objects, shutdown_distributed
from hf_ext.utils.io import atomic_write_json


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 12)
        self.head = nn.Linear(12, 3)  # 3 rows on 2 ranks: uneven shards

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def fresh():
    torch.manual_seed(0)
    return Net()


def amplifier():
    torch.manual_seed(5)
    return NeuralAmplifier((8, 8), c=1.0)


def batches(rank, steps=3):
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)) for _ in range(steps)]


CONFIGS = {
    "neuralgrok": lambda m: NeuralGrokOptimizer(torch.optim.Adam(m.parameters(), lr=1e-2), amplifier()),
    "neuralgrok_ablation": lambda m: NeuralGrokOptimizer(
        torch.optim.Adam(m.parameters(), lr=1e-2), NeuralAmplifier((8,), softmax_dim=-1), clip_norm=None
    ),
    "normalize": lambda m: GradNormOptimizer(torch.optim.Adam(m.parameters(), lr=1e-2)),
    "grokfast_ema": lambda m: GradFilterOptimizer(torch.optim.Adam(m.parameters(), lr=1e-2)),
}


def train(model, opt, data):
    for x, y in data:
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return dict(opt.last_metrics)


def full(model):
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def loss_fn(model, batch):
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


def outer_loss_fn(model, params, batch):
    return nn.functional.mse_loss(torch.func.functional_call(model, params, (batch["x"],)), batch["y"])


def outer_steps(inner, reducer=None):
    """Three outer steps as NeuralGrokTrainer(outer_gradient="recompute") runs them (SGD meta step: Adam would turn
    rounding-level amplifier gradients into full-size steps)."""
    amp = amplifier()
    meta = torch.optim.SGD(amp.parameters(), lr=1.0)
    outer = [{"x": torch.linspace(-1, 1, 24).view(4, 6), "y": torch.linspace(-2, 2, 12).view(4, 3)}]
    for _ in range(3):
        amplifier_outer_step(
            amp, meta, fresh(), inner, outer, 0.1, loss_fn=loss_fn, outer_loss_fn=outer_loss_fn,
            grad_reducer=reducer, g_hat_reducer=reducer,
        )  # fmt: skip
    return {k: v.detach().clone() for k, v in amp.state_dict().items()}


def run(out_dir):
    """The checks, in an initialised 2-rank process group (also run by scale_out_all.py)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == 2, f"this check needs exactly 2 ranks, got {world}"
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    mesh = init_device_mesh("cpu", (world,))
    both = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(batches(0), batches(1))]
    result = {}
    for name, make in CONFIGS.items():
        ref = fresh()
        ref_metrics = train(ref, make(ref), both)
        ref_state = full(ref)
        r = {"moved": max_diff(ref_state, full(fresh()))}
        model = fresh()
        fully_shard(model, mesh=mesh)
        metrics = train(model, make(model), batches(rank))
        r["param_type"] = type(model.head.weight).__name__
        r["fsdp2"] = max_diff(full(model), ref_state)
        r["fsdp2_metrics_rel"] = max(abs(metrics[k] - v) / max(abs(v), 1e-12) for k, v in ref_metrics.items())
        model = fresh()
        opt = make(model)
        train(DistributedDataParallel(model), opt, batches(rank))
        r["ddp"] = max_diff(full(model), ref_state)
        result[name] = r

    # |g| ~ 1e-25 on sharded gradients: every transformed tensor still has norm c (its squares underflowed in float32)
    result["tiny_sharded_norm_error"] = {}
    for name, transform in [
        ("neuralgrok", lambda params: amplifier().transform_(params)),
        ("normalize", lambda params: GradNormOptimizer(torch.optim.SGD(params, lr=1.0)).transform_gradients(params)),
    ]:
        model = fresh()
        fully_shard(model, mesh=mesh)
        (1e-25 * nn.functional.mse_loss(model(batches(rank)[0][0]), batches(rank)[0][1])).backward()
        params = list(model.parameters())
        transform(params)
        norms = [float(p.grad.full_tensor().norm()) for p in params]
        result["tiny_sharded_norm_error"][name] = max(abs(n - 1.0) for n in norms)

    # outer step: one process on the concatenated batch vs each rank on its own half with the trainer's reducers
    def mean_over_ranks(t):
        t = t.clone()
        dist.all_reduce(t)
        return t / world

    (x, y) = batches(rank)[0]
    ref = outer_steps([{"x": both[0][0], "y": both[0][1]}])
    ddp = outer_steps([{"x": x, "y": y}], reducer=mean_over_ranks)
    result["outer_ddp"] = {"moved": max_diff(ref, amplifier().state_dict()), "ddp": max_diff(ddp, ref)}

    model = fresh()
    fully_shard(model, mesh=mesh)
    try:
        amplifier_outer_step(amplifier(), torch.optim.SGD(amplifier().parameters(), lr=0.1), model, [], [{"x": x}], 0.1,
                             g_hat=[None] * 6)  # fmt: skip
        result["outer_fsdp2_error"] = None
    except ValueError as err:
        result["outer_fsdp2_error"] = str(err)
    gathered = gather_objects(result)  # rank 0 writes every rank's result
    if rank == 0:
        atomic_write_json(os.path.join(out_dir, "scale_out_neuralgrok.json"), gathered, None)


def main(out_dir):
    dist.init_process_group("gloo")
    run(out_dir)
    shutdown_distributed()  # all ranks shut down together


if __name__ == "__main__":
    main(sys.argv[1])
