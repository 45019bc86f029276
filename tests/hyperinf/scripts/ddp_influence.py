"""Run on 2 gloo ranks: data-parallel `InfluenceEstimator` and `InfluenceEngine` against one process.

Usage: ddp_influence.py OUT_DIR              (under `torchrun --nproc_per_node 2`; the test's checks)
       ddp_influence.py OUT_DIR bench N      (timing of hyperinf on N training examples; plain `python` for one process)

Checks mode: every rank writes OUT_DIR/rank<rank>.json with, per case (method and dtype), the data-parallel scores,
the scores of a one-process estimator (`distributed=False`, the whole set in this process), the indices of the training
shard, how many examples this rank differentiated in `fit`, and a digest of its fitted solvers; plus the one-example
training set (rank 1's shard empty), a gradient error in rank 1's shard only, and ranks passing different training
sets (each must raise on both ranks, not hang). The test compares the files.
"""

import hashlib
import json
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEngine, InfluenceEstimator, PerExampleGradients

CASES = [
    ("hyperinf", torch.float32, {}),
    ("hyperinf", torch.float64, {}),
    ("datainf", torch.float32, {}),
    ("lissa", torch.float32, {"lissa_iterations": 3}),
    ("lissa", torch.float64, {"lissa_iterations": 3}),
    ("tracin", torch.float32, {}),
    ("exact", torch.float32, {}),
    ("exact", torch.float64, {"exact_curvature": "fim"}),
]


def tiny_lora(dtype=torch.float32):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    return model.to(dtype)


def rows(n, seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=gen).tolist()
    return [{"input_ids": torch.randint(1, 64, (k,), generator=gen).tolist()} for k in lengths]


def count_examples():
    """Count the examples PerExampleGradients differentiates in this process (a list holding the running total)."""
    counter = [0]
    original = PerExampleGradients._batch_grads

    def counted(self, batch):
        counter[0] += batch["input_ids"].shape[0]
        return original(self, batch)

    PerExampleGradients._batch_grads = counted
    return counter


def solver_digest(estimator):
    digest = hashlib.sha256()
    for name, layer in estimator.engine.layers.items():
        if layer.solver is not None:
            digest.update(name.encode() + layer.solver.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def raised(work):
    try:
        work()
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return None


def checks(out_dir, rank):
    counter = count_examples()
    train, evals = (
        Dataset.from_list(rows(9, 0)),
        Dataset.from_list(rows(5, 1)),
    )  # odd sizes: shards of 5 and 4, 3 and 2
    result = {}
    for method, dtype, options in CASES:
        key = f"{method}-{str(dtype).split('.')[-1]}-{options.get('exact_curvature', '')}"
        model = tiny_lora(dtype)
        single = InfluenceEstimator(model, method, batch_size=2, dtype=dtype, distributed=False, **options)
        single_scores = single.fit(train).scores(evals)
        estimator = InfluenceEstimator(model, method, batch_size=2, dtype=dtype, **options)
        counter[0] = 0
        estimator.fit(train)
        fitted = counter[0]
        scores = estimator.scores(evals)
        scored = counter[0] - fitted
        result[key] = {
            "distributed": estimator.distributed,
            "ddp": scores.tolist(),
            "single": single_scores.tolist(),
            "shard": [estimator.train_shard.start, estimator.train_shard.stop],
            "fit_examples": fitted,
            "scores_examples": scored,
            "solvers": solver_digest(estimator),
            "num_train": estimator.engine.num_train,
        }

    # one training example: rank 1's shard is empty (float64: one example's damped curvature is ill-conditioned)
    model = tiny_lora(torch.float64)
    one = Dataset.from_list(rows(1, 2))
    result["empty_shard"] = {
        "ddp": InfluenceEstimator(model, batch_size=2, dtype=torch.float64).fit(one).scores(evals).tolist(),
        "single": InfluenceEstimator(model, batch_size=2, dtype=torch.float64, distributed=False)
        .fit(one)
        .scores(evals)
        .tolist(),
    }
    # distributed=None warns that every rank must call fit and scores (a call on one rank only hangs); True does not
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InfluenceEstimator(model, batch_size=2, dtype=torch.float64)
        auto = [str(w.message) for w in caught]
        InfluenceEstimator(model, batch_size=2, dtype=torch.float64, distributed=True)
        result["auto_warning"] = {"auto": auto, "explicit": [str(w.message) for w in caught][len(auto) :]}
    # a list of dicts is split like a Dataset
    model = tiny_lora()
    result["list"] = InfluenceEstimator(model, batch_size=2).fit(list(train)).scores(list(evals)).tolist()

    # a bad example in rank 1's shard only (one token: no next token to score): both ranks raise
    bad = rows(9, 0)
    bad[7] = {"input_ids": [5]}
    result["bad_example"] = raised(lambda: InfluenceEstimator(model, batch_size=2).fit(Dataset.from_list(bad)))

    # the ranks pass different training sets: refused on both
    differing = Dataset.from_list(rows(9 + rank, 0))
    result["differing"] = raised(lambda: InfluenceEstimator(model, batch_size=2).fit(differing))

    # the engine API with a process group: each rank passes its own part of in-memory gradients
    gen = torch.Generator().manual_seed(3)
    grads = {"a": torch.randn(7, 2, 6, generator=gen, dtype=torch.float64)}
    eval_grads = {"a": torch.randn(3, 2, 6, generator=gen, dtype=torch.float64)}
    parts = {0: slice(0, 4), 1: slice(4, 7)}
    eval_parts = {0: slice(0, 0), 1: slice(0, 3)}  # rank 0 has no evaluation example
    engine_scores = {}
    for method in ("hyperinf", "datainf", "lissa"):
        config_kwargs = {"method": method, "dtype": torch.float64}
        ref = InfluenceEngine(_config(**config_kwargs), {"a": (2, 6)})
        ref.fit([grads])
        dp = InfluenceEngine(_config(**config_kwargs), {"a": (2, 6)}, process_group=dist.group.WORLD)
        dp.fit([{"a": grads["a"][parts[rank]]}])
        mine = eval_grads["a"][eval_parts[rank]]
        engine_scores[method] = {
            "ddp": dp.scores([{"a": mine}] if len(mine) else []).tolist(),
            "single": ref.scores([eval_grads]).tolist(),
        }
    result["engine"] = engine_scores
    # rank 1 passes a generator (read once only), refused before any pass: raised on both ranks
    dp = InfluenceEngine(_config(), {"a": (2, 6)}, process_group=dist.group.WORLD)
    source = [{"a": grads["a"][parts[rank]].float()}]
    result["engine_bad_source"] = raised(lambda: dp.fit(source if rank == 0 else iter(source)))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


def _config(**kwargs):
    from hf_ext.hyperinf import InfluenceConfig

    return InfluenceConfig(**kwargs)


def bench(out_dir, n, rank):
    model = tiny_lora()
    train, evals = Dataset.from_list(rows(n, 0)), Dataset.from_list(rows(32, 1))
    start = time.perf_counter()
    scores = InfluenceEstimator(model, batch_size=8).fit(train).scores(evals)
    seconds = time.perf_counter() - start
    if rank == 0:
        with open(os.path.join(out_dir, f"bench_world{int(os.environ.get('WORLD_SIZE', '1'))}.json"), "w") as f:
            json.dump({"seconds": seconds, "scores": scores.tolist()}, f)
    print(f"rank {rank}: {n} examples, fit + scores {seconds:.2f} s", flush=True)


def main():
    torch.set_num_threads(1)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
        assert dist.get_world_size() == 2, dist.get_world_size()
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        if sys.argv[2:3] == ["bench"]:
            bench(out_dir, int(sys.argv[3]), rank)
        else:
            checks(out_dir, rank)
            print(f"rank {rank}: OK", flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
