"""Federated LoRA vs full fine-tuning with canaries and privacy defenses. See `hf_ext.recipes.federated`."""

from hf_ext.recipes.federated import main

if __name__ == "__main__":
    main()
