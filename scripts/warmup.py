"""Warmup study: AdamW with/without warmup vs LionAR without warmup. See `hf_ext.recipes.warmup`."""

from hf_ext.recipes.warmup import main

if __name__ == "__main__":
    main()
