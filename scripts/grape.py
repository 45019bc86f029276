"""GRAPE multi-source multi-target data-mixture reweighting on the embedded corpus. See `hf_ext.recipes.grape`."""

from hf_ext.recipes.grape import main

if __name__ == "__main__":
    main()
