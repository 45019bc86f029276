"""Cubic Newton with/without momentum vs SGD and Adam. See `hf_ext.recipes.cubic_newton`."""

from hf_ext.recipes.cubic_newton import main

if __name__ == "__main__":
    main()
