"""lm-eval task configs and their local data (pass this folder to `lm_eval --include_path`)."""
