"""`evaluate` module data_compliance_gap (load with `evaluate.load(hf_ext.evaluation.metric_path("data_compliance_gap"))`)."""
