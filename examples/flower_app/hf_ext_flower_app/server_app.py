"""ServerApp: FedAvg over LoRA adapters with Flower's SecAggPlusWorkflow, configured by the run config."""

from hf_ext.federated.flower_task import run_config_server_app

app = run_config_server_app()
