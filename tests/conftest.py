"""Shared fixtures: offline mode, a per-session cache, the embedded corpus and tokenizer."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return REPO_ROOT


@pytest.fixture(scope="session")
def corpus():
    """The embedded corpus, train split."""
    from hf_ext.data import load_corpus

    return load_corpus("train")


@pytest.fixture(scope="session")
def corpus_test():
    from hf_ext.data import load_corpus

    return load_corpus("test")


@pytest.fixture(scope="session")
def tokenizer():
    """Byte-level BPE with 4096 tokens trained on the corpus (cached across sessions)."""
    from hf_ext.data import build_tokenizer

    return build_tokenizer(4096)


@pytest.fixture(scope="session")
def small_tokenizer():
    """Byte-level BPE with 512 tokens: for tests where a small embedding matters."""
    from hf_ext.data import build_tokenizer

    return build_tokenizer(512)


@pytest.fixture
def free_port() -> int:
    """A TCP port the OS reports free on 127.0.0.1, for `torchrun --master_port` (a fixed or counter-based port
    collides with other runs on the same machine)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
