"""Pass-21 secure-aggregation fixes.

F2: `global_state_digest` raised torch's RuntimeError on a lazy conjugate view (`x.conj()`), a negative view
(`x.conj().imag`) or a one-element slice whose stride is not 1 (`w[:1, 1]`); it now hashes the values they stand for.
"""

import torch

from hf_ext.federated import global_state_digest

# ---------------------------------------------------------------------------- F2: conjugate and negative views


def test_global_state_digest_hashes_conjugate_and_negative_views_by_value():
    x = torch.tensor([1 + 2j, -3 + 0.5j], dtype=torch.complex64)
    conj = x.conj()
    assert conj.is_conj()
    d = global_state_digest({"w": conj})
    assert d == global_state_digest({"w": conj.resolve_conj()}) == global_state_digest({"w": torch.conj_physical(x)})
    assert d != global_state_digest({"w": x})  # the conjugate is another state
    neg = torch.tensor([1 + 2j]).conj().imag  # a real, contiguous tensor with the negative bit set
    assert neg.is_neg() and neg.is_contiguous()
    assert global_state_digest({"w": neg}) == global_state_digest({"w": torch.tensor([-2.0])})
    # a one-element slice of a wider tensor: "contiguous", yet its stride is not 1 (torch refused to view its bytes)
    w = torch.arange(8, dtype=torch.float32).reshape(4, 2)
    for part in (w[:1, 1], w[1:2, :1].t(), torch.tensor([1 + 2j]).imag, torch.stack([x, x], 1)[:1, 0].conj()):
        assert part.numel() == 1 and part.is_contiguous() and part.stride()[-1] != 1
        fresh = torch.tensor(part.resolve_conj().tolist(), dtype=part.dtype)
        assert fresh.stride()[-1] == 1 and global_state_digest({"w": part}) == global_state_digest({"w": fresh})
