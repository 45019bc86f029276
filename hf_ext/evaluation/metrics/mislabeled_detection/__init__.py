"""`evaluate` module mislabeled_detection (load with `evaluate.load(hf_ext.evaluation.metric_path("mislabeled_detection"))`)."""
