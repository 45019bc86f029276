"""Grokking race on modular arithmetic (AdamW vs Grokfast vs NeuralGrok). See `hf_ext.recipes.neuralgrok`."""

from hf_ext.recipes.neuralgrok import main

if __name__ == "__main__":
    main()
