"""`hf-ext env`: the versions and devices a bug report needs, as `transformers env` prints them."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

PACKAGES = (
    "hf_ext", "torch", "transformers", "accelerate", "peft", "trl", "datasets", "evaluate", "tokenizers",
    "safetensors", "torchao", "transformer_engine", "flwr", "datatrove", "dp-accounting", "fast-robotstxt",
    "protego", "lm_eval", "numpy",
)  # fmt: skip


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, str]:
    """Platform, Python, package versions and the accelerator devices torch sees."""
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }
    for dist in PACKAGES:
        info[dist] = _version(dist)
    try:
        import torch

        info["torch CUDA build"] = str(torch.version.cuda)
        info["CUDA available"] = str(torch.cuda.is_available())
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["GPUs"] = f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)
            major, minor = torch.cuda.get_device_capability(0)
            info["compute capability"] = f"{major}.{minor} (FP8 tensor cores: {'yes' if major >= 9 else 'no'})"
        info["CPU threads (torch)"] = str(torch.get_num_threads())
    except Exception as err:  # a broken torch install is itself the thing to report
        info["torch import"] = f"failed: {err}"
    info["CPU cores"] = str(os.cpu_count())
    for var in ("HF_HUB_OFFLINE", "HF_EXT_CACHE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"):
        if os.environ.get(var) is not None:
            info[var] = os.environ[var]
    return info


def format_env(info: dict[str, str]) -> str:
    """Markdown bullet list, ready to paste into an issue."""
    return "\n".join(f"- {key}: {value}" for key, value in info.items())
