"""Filter a corpus by robots.txt AI-crawler opt-outs and print retention statistics. See `hf_ext.recipes.compliance`."""

from hf_ext.recipes.compliance import main

if __name__ == "__main__":
    main()
