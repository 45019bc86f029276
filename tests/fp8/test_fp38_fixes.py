"""Audit pass 34 (fp38) fixes in the FP8 layer."""

import io

import torch
from transformers import Trainer, TrainingArguments

from hf_ext.fp8 import Fp8HealthCallback
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n=8):
        self.ids = torch.randint(0, 64, (n, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_health_callback_removes_its_hooks_when_training_ends(tmp_path):
    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY))
    before = _hooks(model)
    cb = Fp8HealthCallback(every_n_steps=1)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, report_to=[], use_cpu=True,
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(), callbacks=[cb])
    trainer.train()
    assert [r["step"] for r in cb.history] == [1, 2]
    assert _hooks(model) == before  # none of the monitor's hooks stays on the trained model
    torch.save(model, io.BytesIO())  # failed: "Can't pickle local object 'KurtosisMonitor._make_layer_end_hook...'"
    # a further train() of the same trainer monitors again (the hooks come back when monitoring starts)
    trainer.args.max_steps = 3
    trainer.train()
    assert [r["step"] for r in cb.history][-1] == 3 and _hooks(model) == before


def _attention_inputs():
    from types import SimpleNamespace

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16) * 3 for _ in range(3))
    mask = torch.triu(torch.full((8, 8), float("-inf")), 1)[None, None]
    return SimpleNamespace, q, k, v, mask


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_fp8_attention_applies_gemma2_softcap():
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from hf_ext.fp8 import fp8_attention_forward

    ns, q, k, v, mask = _attention_inputs()
    module = ns(num_key_value_groups=1, training=False)
    ref, _ = eager_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=1.0)
    got, _ = fp8_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=1.0)
    assert _rel(got, ref) < 0.1  # FP8 noise (~4%); the softcap was ignored: 1.11


def test_fp8_attention_applies_attention_sinks():
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    from hf_ext.fp8 import fp8_attention_forward

    ns, q, k, v, mask = _attention_inputs()
    module = ns(num_key_value_groups=1, training=False, sinks=torch.tensor([2.0, -1.0]))
    ref, ref_probs = eager_attention_forward(module, q, k, v, mask, scaling=0.25)
    got, probs = fp8_attention_forward(module, q, k, v, mask, scaling=0.25)
    assert probs.shape == ref_probs.shape
    assert _rel(got, ref) < 0.1  # FP8 noise (~5%); the sinks were ignored: 0.54


def test_te_attention_refuses_softcap_and_sinks_instead_of_dropping_them():
    import pytest

    from hf_ext.fp8 import build_te_attention_forward

    def kernel(*args):  # never reached: the refusal comes first
        raise AssertionError("the TE kernel ran without the model's softcap / sinks")

    forward = build_te_attention_forward(kernel)
    ns, q, k, v, _ = _attention_inputs()
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    module = ns(num_key_value_groups=1, training=False)
    with pytest.raises(ValueError, match="softcap.*backend='emulated'"):
        forward(module, q, k, v, None, scaling=0.25, softcap=50.0)
    with pytest.raises(ValueError, match="s_aux"):
        forward(module, q, k, v, None, scaling=0.25, s_aux=torch.zeros(2))


def test_health_callback_refuses_a_string_or_empty_list_with_the_argument_named():
    import pytest

    with pytest.raises(ValueError, match=r"log_stats must be a tuple of names, e.g. log_stats=\('rms',\)"):
        Fp8HealthCallback(log_stats="rms")  # read as the characters r, m, s: "got rms" before
    with pytest.raises(ValueError, match=r"absolute_exempt_sites must be a tuple"):
        Fp8HealthCallback(absolute_exempt_sites="mlp_post_act")  # listed its characters as unknown sites before
    with pytest.raises(ValueError, match="sites is empty"):
        Fp8HealthCallback(sites=[])  # accepted, then "none of the requested sites exist" at train()
