"""Bad-input audit br18, fp8: errors naming the argument."""

import pytest
import torch

from hf_ext.fp8 import kurtosis, quantize_dequantize


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.float16, "e4m3"])
def test_quantize_dequantize_refuses_non_fp8_dtype(dtype):
    """dtype=None failed with "KeyError: None"."""
    with pytest.raises(ValueError, match="quantize_dequantize: `dtype` must be one of torch.float8_e4m3fn"):
        quantize_dequantize(torch.randn(4), torch.tensor(1.0), dtype)


def test_kurtosis_of_a_0d_tensor_needs_per_sample_false():
    """kurtosis(torch.tensor(1.0)) failed with "IndexError: tuple index out of range"."""
    with pytest.raises(ValueError, match="0-d x has no sample dimension for per_sample=True"):
        kurtosis(torch.tensor(1.0))
    assert float(kurtosis(torch.tensor(2.0), per_sample=False)) == pytest.approx(1.0)
