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

