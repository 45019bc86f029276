"""Flower App for federated LoRA with hf_ext (SecAgg+ and DP-SGD)."""
