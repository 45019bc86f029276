"""Small shared utilities: lazy Auto-class registration, quiet third-party imports."""

from .auto_registration import register_auto_model_lazily
from .evaluation import causal_lm_eval_loss
from .io import ensure_writable_dir
from .quiet import silence_known_import_noise

__all__ = ["causal_lm_eval_loss", "ensure_writable_dir", "register_auto_model_lazily", "silence_known_import_noise"]
