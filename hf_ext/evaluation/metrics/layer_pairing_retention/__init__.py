"""`evaluate` module layer_pairing_retention (load with `evaluate.load(hf_ext.evaluation.metric_path("layer_pairing_retention"))`)."""
