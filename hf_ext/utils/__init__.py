"""Small shared utilities: lazy Auto-class registration, quiet third-party imports."""

from .auto_registration import register_auto_model_lazily
from .distributed import rank_fingerprints, shutdown_distributed, world_size
from .evaluation import EvalRowsOnceMixin, causal_lm_eval_loss
from .io import (
    atomic_open,
    atomic_savefig,
    atomic_write_json,
    atomic_write_results,
    atomic_write_text,
    ensure_writable_dir,
    make_temp_dir,
    strict_json,
)
from .quiet import silence_known_import_noise
from .resume import last_complete_checkpoint, normalize_resume_argv, resolve_resume_checkpoint

__all__ = [
    "EvalRowsOnceMixin",
    "atomic_open",
    "atomic_savefig",
    "atomic_write_json",
    "atomic_write_results",
    "atomic_write_text",
    "causal_lm_eval_loss",
    "ensure_writable_dir",
    "last_complete_checkpoint",
    "make_temp_dir",
    "normalize_resume_argv",
    "rank_fingerprints",
    "register_auto_model_lazily",
    "resolve_resume_checkpoint",
    "shutdown_distributed",
    "silence_known_import_noise",
    "strict_json",
    "world_size",
]
