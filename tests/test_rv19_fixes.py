"""Regression-review fixes (rv19): inputs that worked before the bad-input checks of pass 18 and were then refused.
`GrapeConfig` file names as `pathlib.Path`; DoGE's clip bounds +-inf (one side off); 0-d tensors where numbers are
expected (`schulz_inverse(alpha=1 / torch.linalg.matrix_norm(A))`, `steps_to_accuracy(target=)`,
`arithmetic_vocab_size(p=)`, `select_lowest_influence(fraction=)`), whose messages blamed the value's range."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch


def test_grape_config_takes_path_file_names(tmp_path):
    from hf_ext.grape import GrapeConfig

    args = GrapeConfig(output_dir=str(tmp_path), export_mixture_file=Path("m.json"), plot_file=Path("w.png"))
    assert (args.export_mixture_file, args.plot_file) == ("m.json", "w.png")
    json.loads(args.to_json_string())
    with pytest.raises(ValueError, match="export_mixture_file must be a file name"):
        GrapeConfig(output_dir=str(tmp_path), export_mixture_file=1)


def test_doge_infinite_bounds_turn_one_side_of_the_clip_off():
    from hf_ext.grape.rules import doge_domain_weights

    w = torch.tensor([0.5, 0.5], dtype=torch.float64)
    scores, norms = torch.tensor([3.0, -1.0]), torch.tensor([1.0, 1.0])
    kw = dict(learning_rate=1.0, mu=0.5, smoothing=0.0)
    # with the scores inside [-10, 10], no clip and an infinite bound give the same weights
    wide = doge_domain_weights(w, scores, norms, score_min=-10.0, score_max=10.0, **kw)
    for lo, hi in ((-math.inf, 10.0), (-10.0, math.inf), (-math.inf, math.inf)):
        torch.testing.assert_close(doge_domain_weights(w, scores, norms, score_min=lo, score_max=hi, **kw), wide)
    clipped = doge_domain_weights(w, scores, norms, score_min=-math.inf, score_max=1.0, **kw)
    assert not torch.allclose(clipped, wide)  # the finite side still clips
    zero_lr = doge_domain_weights(
        w, scores, norms, score_min=-math.inf, score_max=math.inf, **{**kw, "learning_rate": 0}
    )
    torch.testing.assert_close(zero_lr, w)  # no NaN from 0 * inf
    with pytest.raises(ValueError, match="score_max must be a number"):
        doge_domain_weights(w, scores, norms, score_max=math.nan, **kw)


def test_zero_dim_tensors_are_numbers():
    from hf_ext.hyperinf.linalg import schulz_inverse
    from hf_ext.hyperinf.metrics import select_lowest_influence
    from hf_ext.neuralgrok.data import arithmetic_vocab_size
    from hf_ext.neuralgrok.metrics import steps_to_accuracy

    a = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    alpha = 1 / torch.linalg.matrix_norm(a) ** 2
    x_tensor = schulz_inverse(a, alpha=alpha, num_iterations=30)
    x_float = schulz_inverse(a, alpha=float(alpha), num_iterations=30)
    x_tensor = x_tensor[0] if isinstance(x_tensor, tuple) else x_tensor
    x_float = x_float[0] if isinstance(x_float, tuple) else x_float
    assert torch.equal(x_tensor, x_float)
    assert steps_to_accuracy([1, 2, 3], [0.5, 0.96, 0.97], target=torch.tensor(0.95)) == 2
    assert arithmetic_vocab_size("a+b", torch.tensor(97)) == arithmetic_vocab_size("a+b", 97)
    scores = np.array([0.3, -1.0, 2.0, -0.5])
    assert list(select_lowest_influence(scores, torch.tensor(0.5))) == list(select_lowest_influence(scores, 0.5))
    with pytest.raises(TypeError, match="p must be an int"):
        arithmetic_vocab_size("a+b", torch.tensor(97.0))
    with pytest.raises(ValueError, match="target"):
        steps_to_accuracy([1], [0.5], target=torch.tensor([0.95, 0.9]))
