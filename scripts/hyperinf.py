"""Influence methods on a LoRA-tuned classifier: mislabeled-data detection and data selection. See `hf_ext.recipes.hyperinf`."""

from hf_ext.recipes.hyperinf import main

if __name__ == "__main__":
    main()
