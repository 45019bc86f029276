"""Pretrain with and without URL context and show guided generation. See `hf_ext.recipes.metadata_pretrain`."""

from hf_ext.recipes.metadata_pretrain import main

if __name__ == "__main__":
    main()
