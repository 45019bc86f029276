"""mu35 mutation run: every method-specific InfluenceEstimator option is refused off its method (hi35 F1)."""

import pytest
import torch

from hf_ext.hyperinf import InfluenceEstimator

from .test_hi35_fixes import tiny_lora  # noqa: F401  (module fixture)

# option, a value other than its default, the one method that reads it (listed here, not read from the library)
OPTIONS = [
    ("schulz_iterations", 7, "hyperinf"),
    ("schulz_init", "identity", "hyperinf"),
    ("schulz_alpha", 1e-3, "hyperinf"),
    ("schulz_tol", None, "hyperinf"),
    ("schulz_order", 3, "hyperinf"),
    ("schulz_extra_damping", 1e-2, "hyperinf"),
    ("schulz_dtype", torch.float32, "hyperinf"),
    ("lissa_iterations", 3, "lissa"),
    ("lissa_scale", 2.0, "lissa"),
    ("exact_curvature", "fim", "exact"),
    ("max_exact_dim", 16, "exact"),
]


@pytest.mark.parametrize("option, value, reader", OPTIONS)
def test_each_method_specific_option_is_refused_off_its_method(tiny_lora, option, value, reader):  # noqa: F811
    for method in ("hyperinf", "lissa", "exact", "datainf", "tracin"):
        if method == reader:
            continue
        with pytest.raises(
            ValueError, match=rf"method='{method}' does not read `{option}` \(read `{option}` only by "
        ):
            InfluenceEstimator(tiny_lora, method, **{option: value})
