"""Layer-paired inference: sweep, convert within a perplexity budget, fine-tune the pairs. See `hf_ext.recipes.layer_parallel`."""

from hf_ext.recipes.layer_parallel import main

if __name__ == "__main__":
    main()
