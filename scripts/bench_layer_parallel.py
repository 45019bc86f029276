"""Decode throughput of a Llama model before and after layer pairing, measured in the same process.

Prints one JSON line per (model, mode, batch) with decode tokens/s, then one JSON line per (mode, batch) with the
ratio converted / source. Modes: "eager" (DynamicCache, no compilation) and "compiled" (StaticCache, forward
compiled by `generate`). With `--control` (the default on CPU) a third model is timed in the same alternation: the
source converted with *zero* pairs (the layer-parallel class at the source's depth, identical logits), whose ratio to
the source (`control_decode_ratio`, and per-repeat ranges `*_range`) is the run's noise floor: a paired ratio inside
the control's spread is not a measured speed-up. A repeat whose full generation took no longer than the 1-token
one (timer noise) measured no decode time: it is left out of the best and median and counted in `invalid_runs`; a
model with no valid repeat fails the run (use a larger `--new_tokens`). Default: the Llama-3.2-3B shape (28 layers, random weights, bf16) with 7 pairs on a GPU.
`--tiny` changes the defaults to a small model on CPU in eager mode; every flag given explicitly is used as given, and
each JSON line records the settings the run used (shape, pairs, new tokens, repeats, ...).

    python scripts/bench_layer_parallel.py                 # GPU, 3B shape, 7 pairs, batch 1 and 8, eager + compiled
    python scripts/bench_layer_parallel.py --tiny          # CPU, small model, eager
    torchrun --nproc_per_node 2 scripts/bench_layer_parallel.py --tp 2          # 2 GPUs, tensor parallel
    torchrun --nproc_per_node 2 scripts/bench_layer_parallel.py --tp 2 --tiny   # 2 CPU ranks (gloo), script check

With `--tp N` (under `torchrun --nproc_per_node N`) both models are saved once and loaded on every rank with
transformers' tensor parallelism (`DistributedConfig(tp_plan="auto")`): the source model with Llama's plan, the
converted one with its own plan, which puts one layer of each merged pair on each rank at N=2. Only rank 0 prints.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field

# hf_ext first: it registers the layer-parallel architecture and filters torchao's CPU-build "Failed to load" noise,
# which importing transformers first would print
import hf_ext  # noqa: F401

# isort: split
import torch
import torch.distributed as dist
from transformers import (
    AutoModelForCausalLM,
    CompileConfig,
    DistributedConfig,
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
)

from hf_ext.models.layer_parallel import convert_to_layer_parallel
from hf_ext.models.layer_parallel.configuration_layer_parallel import LP_MODES

#: name of the zero-pair control model in the JSON lines (`--control`)
CONTROL = "layer_parallel_0pairs"

# Defaults of the flags that `--tiny` changes: (GPU default, --tiny default). A flag given on the command line always
# wins; `--tiny` only changes what an omitted flag means.
SIZE_DEFAULTS = {
    "num_hidden_layers": (28, 8),
    "hidden_size": (3072, 64),
    "intermediate_size": (8192, 128),
    "num_attention_heads": (24, 4),
    "num_key_value_heads": (8, 2),
    "vocab_size": (128256, 512),
    "num_pairs": (7, 3),
    "new_tokens": (128, 32),
    "repeats": (3, 5),
}


@dataclass
class BenchArguments:
    tiny: bool = field(
        default=False,
        metadata={
            "help": "Small model on CPU: changes the defaults only (8 layers, hidden 64, MLP 128, 4/2 heads, vocab 512, "
            "3 pairs, 32 new tokens, 5 repeats, --device cpu, so eager mode); flags given explicitly win."
        },
    )
    num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Layers of the source model (28; --tiny 8)."}
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Hidden size (3072; --tiny 64)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (8192; --tiny 128)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Attention heads (24; --tiny 4)."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "KV heads (8; --tiny 2)."})
    vocab_size: int | None = field(default=None, metadata={"help": "Vocabulary (128256; --tiny 512)."})
    num_pairs: int | None = field(
        default=None,
        metadata={
            "help": "Number of pairs (7; --tiny 3). Without --lp_start the range ends before the last layer, which "
            "needs 2 * pairs + 1 layers."
        },
    )
    lp_start: int | None = field(default=None, metadata={"help": "First paired layer (default: L - 1 - 2 * pairs)."})
    lp_mode: str = field(default="sublayer", metadata={"help": f"{' or '.join(LP_MODES)}."})
    batch_sizes: str = field(default="1,8", metadata={"help": "Comma-separated decode batch sizes."})
    modes: str | None = field(
        default=None, metadata={"help": "Comma-separated: eager, compiled (default: both on GPU, eager on CPU)."}
    )
    prompt_length: int = field(default=32, metadata={"help": "Prompt tokens (prefill time is subtracted)."})
    new_tokens: int | None = field(default=None, metadata={"help": "Generated tokens per timed run (128; --tiny 32)."})
    repeats: int | None = field(
        default=None, metadata={"help": "Timed runs per model and configuration, best and median (3; --tiny 5)."}
    )
    dtype: str | None = field(default=None, metadata={"help": "bfloat16, float16 or float32 (default: bf16 on GPU)."})
    device: str | None = field(
        default=None, metadata={"help": "cuda or cpu (default: cuda when available; cpu with --tiny)."}
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "Attention kernel: sdpa or eager."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights and prompts."})
    tp: int = field(
        default=1,
        metadata={
            "help": "Tensor-parallel ranks: launch with `torchrun --nproc_per_node TP`. Both models are split with "
            "transformers' tensor parallelism (default modes with --tp: eager)."
        },
    )
    work_dir: str | None = field(
        default=None, metadata={"help": "With --tp: folder for the two saved checkpoints (default: a temporary one)."}
    )
    control: bool | None = field(
        default=None,
        metadata={
            "help": "Also time the source converted with zero pairs (same depth and logits, no speed-up expected): "
            "its ratio to the source is the noise floor of the run. Default: on with --device cpu, off on GPU "
            "(the GPU check's time budget); not available with --tp. Give --control true or false."
        },
    )


def _batch_sizes(text: str) -> list[int]:
    """`--batch_sizes` '1,8' -> [1, 8]; every entry must be a positive integer."""
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch_sizes must be comma-separated positive integers like '1,8', got {text!r}.")
    return sizes


def _resolve(args: BenchArguments) -> BenchArguments:
    """Fill the flags left unset (`None`) with their defaults (those of `--tiny` with `--tiny`) and check them all.
    A flag given explicitly is never changed."""
    for name, (default, tiny_default) in SIZE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny_default if args.tiny else default)
    if args.tiny and args.device is None:
        args.device = "cpu"
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.tp < 1:
        raise ValueError(f"--tp must be >= 1, got {args.tp}.")
    if args.tp > 1:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world != args.tp:
            raise ValueError(
                f"--tp {args.tp} needs {args.tp} processes, found WORLD_SIZE={world}; launch with "
                f"`torchrun --nproc_per_node {args.tp} scripts/bench_layer_parallel.py --tp {args.tp} ...`."
            )
        for name in ("num_attention_heads", "num_key_value_heads"):
            if getattr(args, name) % args.tp:
                raise ValueError(f"--{name} ({getattr(args, name)}) must be divisible by --tp {args.tp}.")
        if args.device == "cuda":
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if args.control is None:
        args.control = args.device == "cpu" and args.tp == 1
    if args.control and args.tp > 1:
        raise ValueError("--control is not available with --tp: give --control false (or run without --tp).")
    if args.modes is None:
        args.modes = "eager" if args.device == "cpu" or args.tp > 1 else "eager,compiled"
    if args.dtype is None:
        args.dtype = "float32" if args.device == "cpu" else "bfloat16"
    # validate everything before building anything
    if args.num_pairs < 1:
        raise ValueError(f"--num_pairs must be >= 1 (the number of layer pairs to time), got {args.num_pairs}.")
    if args.lp_start is None:
        args.lp_start = args.num_hidden_layers - 1 - 2 * args.num_pairs
        if args.num_pairs >= 1 and args.lp_start < 0:
            raise ValueError(
                f"--num_pairs {args.num_pairs} from the default --lp_start does not fit {args.num_hidden_layers} "
                f"layers: the default range ends before the last layer, which needs {2 * args.num_pairs + 1} layers; "
                "give a smaller --num_pairs, a larger --num_hidden_layers, or an explicit --lp_start (e.g. 0)."
            )
    if args.lp_start < 0:
        raise ValueError(f"--lp_start must be >= 0 (the first paired layer), got {args.lp_start}.")
    _batch_sizes(args.batch_sizes)
    if args.lp_start + 2 * args.num_pairs > args.num_hidden_layers:
        raise ValueError(
            f"--num_pairs {args.num_pairs} from --lp_start {args.lp_start} does not fit {args.num_hidden_layers} layers; "
            "give a smaller --num_pairs (or --lp_start)."
        )
    if args.dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"--dtype must be bfloat16, float16 or float32, got {args.dtype!r}.")
    for mode in args.modes.split(","):
        if mode not in ("eager", "compiled"):
            raise ValueError(f"--modes entries must be eager or compiled, got {mode!r}.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is visible; use --tiny or --device cpu.")
    if args.new_tokens < 2 or args.repeats < 1 or args.prompt_length < 1:
        raise ValueError("--new_tokens must be >= 2, --repeats >= 1 and --prompt_length >= 1.")
    if args.lp_mode not in LP_MODES:
        raise ValueError(f"--lp_mode must be one of {list(LP_MODES)}, got {args.lp_mode!r}.")
    for name in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    heads, kv_heads = args.num_attention_heads, args.num_key_value_heads
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(
            f"--num_key_value_heads ({kv_heads}) must divide --num_attention_heads ({heads}): each KV head serves a "
            f"whole group of query heads (e.g. --num_key_value_heads {heads} or 1)."
        )
    # the attention kernel, checked by transformers on a model without weights (the meta device costs nothing)
    try:
        with torch.device("meta"):
            LlamaForCausalLM._from_config(_llama_config(args), attn_implementation=args.attn_implementation)
    except (ValueError, ImportError) as err:
        raise ValueError(
            f"--attn_implementation {args.attn_implementation!r} cannot be used: {err} Use e.g. sdpa or eager."
        ) from err
    return args


def _llama_config(args: BenchArguments) -> LlamaConfig:
    """The source model's config: the Llama-3.2 shape family with the sizes of `args`, random weights."""
    return LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _generate_time(model, prompt, new_tokens: int, mode: str, device: str) -> float:
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, eos_token_id=None)
    if mode == "compiled":
        compile_config = CompileConfig(
            fullgraph=True, mode="reduce-overhead" if device.startswith("cuda") else "default"
        )
        if not device.startswith("cuda"):
            compile_config._compile_all_devices = True  # transformers' switch to compile on CPU as well
        kwargs.update(cache_implementation="static", compile_config=compile_config)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(prompt, **kwargs)
    _sync(device)
    assert out.shape[1] == prompt.shape[1] + new_tokens
    elapsed = time.perf_counter() - t0
    if dist.is_initialized() and dist.get_world_size() > 1:
        # tensor parallelism: the generation took as long as its slowest rank, and every rank must see the same
        # times, so that they all judge a run valid or invalid alike (a rank raising alone would hang the others)
        # (on the device the collective backend handles: NCCL reduces CUDA tensors only)
        on = device if dist.get_backend() == "nccl" else "cpu"
        slowest = torch.tensor([elapsed], dtype=torch.float64, device=on)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        elapsed = slowest.item()
    return elapsed


def _load_tensor_parallel(source, converted, args: BenchArguments, dtype: torch.dtype) -> dict:
    """Save both models once (rank 0) and load them on every rank with transformers' tensor parallelism."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if args.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(args.device))
    work_dir = [args.work_dir or (tempfile.mkdtemp(prefix="bench_lp_tp_") if dist.get_rank() == 0 else None)]
    dist.broadcast_object_list(work_dir, src=0)
    work_dir = work_dir[0]
    if dist.get_rank() == 0:
        source.save_pretrained(os.path.join(work_dir, "source"))
        converted.save_pretrained(os.path.join(work_dir, "layer_parallel"))
    dist.barrier()
    models = {
        name: AutoModelForCausalLM.from_pretrained(
            os.path.join(work_dir, name),
            distributed_config=DistributedConfig(tp_size=args.tp, tp_plan="auto"),
            dtype=dtype,
            attn_implementation=args.attn_implementation,
        ).eval()
        for name in ("source", "layer_parallel")
    }
    dist.barrier()
    if dist.get_rank() == 0 and args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    return models


def decode_rates(models: dict, prompt, args: BenchArguments, mode: str) -> dict[str, dict]:
    """Decode throughput of each model: batch x (new_tokens - 1) / (time(new_tokens) - time(prefill + 1 token)).

    The models are timed in alternation (source, converted, source, ...) so that drifts of a shared machine hit both
    alike; `best` (fastest run), `median` and `runs` (every run, in order) over `--repeats` runs are returned. A run
    whose full generation took no longer than the 1-token one (timer noise; likely with few `--new_tokens`) measured
    no decode time: it is NaN in `runs`, left out of `best` and `median` and counted in `invalid`. A model none of
    whose runs is valid raises a `RuntimeError` naming `--new_tokens`.
    """
    for model in models.values():  # warm-up (and compilation)
        for _ in range(2):
            _generate_time(model, prompt, args.new_tokens, mode, args.device)
            _generate_time(model, prompt, 1, mode, args.device)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            prefill = _generate_time(model, prompt, 1, mode, args.device)
            full = _generate_time(model, prompt, args.new_tokens, mode, args.device)
            decode = full - prefill
            rates[name].append(prompt.shape[0] * (args.new_tokens - 1) / decode if decode > 0 else math.nan)
    out = {}
    for name, runs in rates.items():
        valid = [r for r in runs if not math.isnan(r)]
        if not valid:
            raise RuntimeError(
                f"Every one of the {len(runs)} timed runs of {name} ({mode}, batch {prompt.shape[0]}) took no longer "
                f"to generate --new_tokens {args.new_tokens} tokens than to generate 1, so no decode time was measured "
                "(timer noise on a busy machine). Use a larger --new_tokens (and more --repeats), or a quieter machine."
            )
        out[name] = dict(best=max(valid), median=statistics.median(valid), runs=runs, invalid=len(runs) - len(valid))
    return out


def _paired_range(runs: list[float], source_runs: list[float]) -> list[float] | None:
    """[min, max] of the per-repeat ratios (each run against the source run timed next to it), over the repeats where
    both runs are valid; `None` when there is none."""
    ratios = [a / b for a, b in zip(runs, source_runs) if not (math.isnan(a) or math.isnan(b))]
    return [round(min(ratios), 3), round(max(ratios), 3)] if ratios else None


def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(args=argv)
    args = _resolve(args)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    config = _llama_config(args)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device("cpu" if args.tp > 1 else args.device):
        source = LlamaForCausalLM._from_config(config, attn_implementation=args.attn_implementation).eval()
    torch.set_default_dtype(previous)
    end = args.lp_start + 2 * args.num_pairs
    converted = convert_to_layer_parallel(source, args.lp_start, end, mode=args.lp_mode)
    models = {"source": source, "layer_parallel": converted}
    if args.control:  # zero pairs: the layer-parallel model class at the source's depth, the source's function
        models[CONTROL] = convert_to_layer_parallel(source, args.lp_start, args.lp_start, mode=args.lp_mode)
    started_group = args.tp > 1 and not dist.is_initialized()
    if args.tp > 1:
        models = _load_tensor_parallel(source, converted, args, dtype)
        del source, converted
    rank0 = args.tp == 1 or dist.get_rank() == 0
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    device_name = _device_name(args.device)
    common = dict(  # the settings this run actually used (after --tiny's defaults)
        device=device_name,
        dtype=args.dtype,
        layers=args.num_hidden_layers,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        vocab_size=args.vocab_size,
        pairs=args.num_pairs,
        range=[args.lp_start, end],
        effective_depth=models["layer_parallel"].config.effective_depth,
        tp=args.tp,
        new_tokens=args.new_tokens,
        prompt_length=args.prompt_length,
        repeats=args.repeats,
        attn_implementation=args.attn_implementation,
        lp_mode=args.lp_mode,
        tiny=args.tiny,
    )
    lines = []
    for mode in args.modes.split(","):
        for batch in _batch_sizes(args.batch_sizes):
            gen = torch.Generator().manual_seed(args.seed + batch)  # the same prompt on every rank
            prompt = torch.randint(3, args.vocab_size, (batch, args.prompt_length), generator=gen).to(args.device)
            rates = decode_rates(models, prompt, args, mode)
            for name, rate in rates.items():
                line = dict(
                    model=name,
                    mode=mode,
                    batch=batch,
                    decode_tokens_per_s=round(rate["best"], 2),
                    decode_tokens_per_s_median=round(rate["median"], 2),
                    invalid_runs=rate["invalid"],
                    **common,
                )
                if name == CONTROL:
                    line.update(pairs=0, range=[args.lp_start, args.lp_start],
                                effective_depth=models[CONTROL].config.effective_depth)  # fmt: skip
                if rank0:
                    print(json.dumps(line), flush=True)
                lines.append(line)
            ratio = dict(
                ratio="layer_parallel/source",
                mode=mode,
                batch=batch,
                decode_ratio=round(rates["layer_parallel"]["best"] / rates["source"]["best"], 3),
                decode_ratio_median=round(rates["layer_parallel"]["median"] / rates["source"]["median"], 3),
                **common,
                decode_ratio_range=_paired_range(rates["layer_parallel"]["runs"], rates["source"]["runs"]),
                invalid_runs={name: rate["invalid"] for name, rate in rates.items()},
            )
            if CONTROL in rates:
                ratio.update(
                    control_decode_ratio=round(rates[CONTROL]["best"] / rates["source"]["best"], 3),
                    control_decode_ratio_median=round(rates[CONTROL]["median"] / rates["source"]["median"], 3),
                    control_decode_ratio_range=_paired_range(rates[CONTROL]["runs"], rates["source"]["runs"]),
                )
            if rank0:
                print(json.dumps(ratio), flush=True)
            lines.append(ratio)
    if started_group:
        dist.barrier()
        dist.destroy_process_group()
    return lines


if __name__ == "__main__":
    main()
