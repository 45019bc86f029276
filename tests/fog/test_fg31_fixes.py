"""Fixes of audit pass 31 (fg31) in the FOG model."""

import json

import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)


def test_authors_smooth_swiglu_checkpoint_with_the_scale_buffer_loads(tmp_path):
    """F1: the authors' `ScaledSwiglu` registers a persistent `scale` buffer, so their smoothswiglu checkpoints hold
    `model.layers.<i>.mlp.act_fn.scale`; it was refused as an unexpected key."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = FogForCausalLM(FogConfig.fog(hidden_act="smooth_swiglu", input_upscale=None, **TINY)).eval()
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    for i in range(TINY["num_hidden_layers"]):
        state[f"model.layers.{i}.mlp.act_fn.scale"] = torch.tensor(1.0)
    raw = {**TINY, "model_type": "fog", "hidden_act": "smoothswiglu", "qk_norm": True, "freeze_qk": True,
           "softmax_scale": 0.125, "final_layernorm": False, "input_upscale": 1.0}  # fmt: skip
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = FogForCausalLM.from_authors_checkpoint(str(tmp_path)).eval()
    assert loaded.config.hidden_act == "smooth_swiglu"
    ids = torch.randint(0, TINY["vocab_size"], (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, source(ids).logits, rtol=0, atol=0)


def test_conformance_script_opts_our_testers_into_the_init_weights_check(tmp_path, monkeypatch):
    """F2: transformers' `test_can_init_all_missing_weights` skips a model whose config file has no "# Copyright
    <year>" header of 2023+ unless its test class opts in; the FOG and layer-parallel testers did not, so the check
    never ran on them ("Not a prioritized model for now")."""
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "run_transformers_conformance.py"
    spec = importlib.util.spec_from_file_location("run_transformers_conformance_fg31", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stubs = {
        "__init__.py": "",
        "causal_lm_tester.py": "class CausalLMModelTest:\n    pass\nclass CausalLMModelTester:\n    pass\n",
        "test_configuration_common.py": "class ConfigTester:\n    pass\n",
        "test_modeling_common.py": "class ModelTesterMixin:\n    pass\ndef ids_tensor(*a):\n    pass\n",
        "generation/__init__.py": "",
        "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    }
    for name, text in stubs.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    for name in [n for n in sys.modules if n == module._PACKAGE or n.startswith(module._PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        testers = module.define_testers(tmp_path, ["fog", "fog-recipe", "lp-merged", "lp-block"])
    finally:
        for name in [n for n in sys.modules if n == module._PACKAGE or n.startswith(module._PACKAGE + ".")]:
            sys.modules.pop(name, None)
    assert set(testers) == {"FogModelTest", "FogRecipeModelTest", "LPMergedTest", "LPBlockTest"}
    for cls in testers.values():
        assert cls.test_can_init_all_missing_weights_before_2023 is True, cls.__name__
