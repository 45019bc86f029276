"""ClientApp: local LoRA training (DP-SGD with Poisson sampling) behind Flower's secaggplus_mod."""

from hf_ext.federated.flower_task import run_config_client_app

app = run_config_client_app()
