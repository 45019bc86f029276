"""Pretrain a causal LM on the embedded corpus (or --dataset_name / --train_file). See `hf_ext.recipes.pretrain`."""

from hf_ext.recipes.pretrain import main

if __name__ == "__main__":
    main()
