"""`evaluate` module canary_extraction (load with `evaluate.load(hf_ext.evaluation.metric_path("canary_extraction"))`)."""
