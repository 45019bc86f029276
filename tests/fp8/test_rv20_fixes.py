"""Fixes of the rv20 review, fp8 side.

F2 `Fp8Trainer` refused an optimizer holding a layer-paired model's stacked branch-wise weights only when the trainer
   itself was about to split them (fp8 mixed precision, no `fp8_recipe_kwargs`). In the documented other order --
   optimizer built, then `ao_recipe_kwargs(model)` or `convert(model)` (which split the merged block pairs into new
   per-branch parameters), then `Fp8Trainer(..., optimizers=(opt, None))` -- nothing was checked: the optimizer kept
   the replaced stacked weights and o_proj / gate / up of every pair silently did not train. `Fp8Trainer` now refuses
   an optimizer that holds replaced stacked weights but not the trainable parameters that replaced them, in every
   path. An optimizer that never held those weights (a subset, which `Trainer` accepts) or that holds the new
   parameters passes; frozen new parameters need not be in it.
"""

import pytest
import torch

import hf_ext  # noqa: F401
from hf_ext.fp8 import ao_recipe_kwargs, convert

from .test_rv19b_fixes import _paired, _trainer

pytest.importorskip("torchao")

_BRANCHES = ("o_proj.branches", "gate_branches", "up_branches")


def _held(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_an_optimizer_built_before_the_users_split_is_refused_with_the_recipe(tmp_path, monkeypatch):
    """The rv20 repro: optimizer, then `ao_recipe_kwargs(model)`, passed as `fp8_recipe_kwargs` under fp8."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    model = _paired()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    recipe = ao_recipe_kwargs(model)  # splits the stacked weights into new parameters
    with pytest.raises(ValueError) as refused:
        _trainer(model, tmp_path, optimizers=(optimizer, None), fp8_recipe_kwargs=recipe)
    text = str(refused.value)
    assert text.startswith("Fp8Trainer: the optimizer passed as `optimizers` was built before")
    assert "model.layers.1.self_attn.o_proj.weight" in text and "model.layers.1.mlp.gate_weight" in text
    assert "not the 6 trainable parameter(s) that replaced them" in text  # 3 groups x 2 branches, one pair
    assert "model.layers.1.self_attn.o_proj.branches.0.weight" in text
    assert "Build the optimizer after the split" in text and "optimizer_cls_and_kwargs" in text


def test_an_optimizer_built_before_convert_is_refused_without_fp8_mixed_precision(tmp_path, monkeypatch):
    """`convert(model)` after the optimizer, then a plain (not fp8 mixed precision) run: the same silent defect."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    model = _paired()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    convert(model)
    with pytest.raises(ValueError, match=r"built before .* split .*mlp\.up_weight.*Build the optimizer after"):
        _trainer(model, tmp_path, optimizers=(optimizer, None))


def test_optimizers_that_train_what_the_user_chose_pass_after_the_split(tmp_path, monkeypatch):
    """Legitimate optimizers with a split model: built after the split; built before but never holding the stacked
    weights (a subset, as `Trainer` accepts: those weights are left alone, as chosen); built before and given the new
    parameters (`add_param_group`); built before with the new parameters frozen."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")

    after = _paired()
    convert(after)
    _trainer(after, tmp_path, optimizers=(torch.optim.AdamW(after.parameters()), None))

    subset = _paired()
    chosen = [p for n, p in subset.named_parameters() if "embed_tokens" in n or "lm_head" in n]
    optimizer = torch.optim.AdamW(chosen, lr=1e-2)
    convert(subset)
    before = {k: v.clone() for k, v in subset.state_dict().items()}
    trainer = _trainer(subset, tmp_path, optimizers=(optimizer, None))
    trainer.train()
    state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert not torch.equal(before["model.embed_tokens.weight"], state["model.embed_tokens.weight"])
    assert torch.equal(before["model.layers.1.mlp.gate_weight"], state["model.layers.1.mlp.gate_weight"])

    added = _paired()
    optimizer = torch.optim.AdamW(added.parameters(), lr=1e-2)
    convert(added)
    new = [p for n, p in added.named_parameters() if any(b in n for b in _BRANCHES) and id(p) not in _held(optimizer)]
    optimizer.add_param_group({"params": new})
    _trainer(added, tmp_path, optimizers=(optimizer, None))

    frozen = _paired()
    optimizer = torch.optim.AdamW(frozen.parameters(), lr=1e-2)
    convert(frozen)
    for n, p in frozen.named_parameters():
        if any(b in n for b in _BRANCHES):
            p.requires_grad_(False)
    _trainer(frozen, tmp_path, optimizers=(optimizer, None))
