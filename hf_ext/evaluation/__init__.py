"""Evaluation the way the field does it: lm-evaluation-harness on hf_ext models with packaged offline tasks, and the
package's own metrics as `evaluate` modules. lm-eval is an optional dependency (`pip install 'hf_ext[eval]'`)."""

from .harness import (
    DEFAULT_TASKS,
    evaluate_model,
    evaluate_models,
    format_table,
    metric_path,
    results_rows,
    save_for_lm_eval,
    task_dir,
    task_manager,
)
from .prompting import check_eval_tasks, check_prefix_fits, evaluate_with_prefix, parse_shots
from .scores import accuracy_retention, task_scores
from .uses import compliance_gap, format_task_sweep_table, layer_pairing_task_sweep

__all__ = [
    "DEFAULT_TASKS",
    "accuracy_retention",
    "check_eval_tasks",
    "check_prefix_fits",
    "evaluate_with_prefix",
    "parse_shots",
    "compliance_gap",
    "format_task_sweep_table",
    "layer_pairing_task_sweep",
    "task_scores",
    "evaluate_model",
    "evaluate_models",
    "format_table",
    "metric_path",
    "results_rows",
    "save_for_lm_eval",
    "task_dir",
    "task_manager",
]
