"""Packaged `evaluate` metric modules (load with `evaluate.load(hf_ext.evaluation.metric_path(name))`)."""
