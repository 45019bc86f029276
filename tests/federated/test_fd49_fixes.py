"""Audit pass 40 (fd49) fixes: the DP-SGD per-sample step dropped the batch's `position_ids`.

A train dataset with a `position_ids` column (kept by the Trainer: the model's forward takes it) trained with the
plain step on those positions, but DP-SGD's per-sample step called the model with `input_ids` and `attention_mask`
only: each sample's gradient was that of another forward (on a GPT-2 with offset windows, 8% of the gradient's norm
off). Now the positions are passed through (moved with their tokens when a left-padded row is rotated), and any other
model input a DP-SGD batch carries (e.g. `token_type_ids`) is refused instead of silently dropped.
"""

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments, per_sample_gradients

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = GPT2LMHeadModel(cfg).double()
    model.set_attn_implementation("eager")
    for name, p in model.named_parameters():
        p.requires_grad_("c_attn" in name)
    return model


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(cfg).double()
    model.set_attn_implementation("eager")
    for name, p in model.named_parameters():
        p.requires_grad_("q_proj" in name or "k_proj" in name)
    return model


def _rows():
    ids = torch.randint(1, 50, (3, 8), generator=torch.Generator().manual_seed(1))
    # windows of longer documents (offsets), and a row whose positions are not contiguous
    pos = torch.arange(8).repeat(3, 1) + torch.tensor([[0], [9], [30]])
    pos[2, 4:] += 5
    return ids, pos


def _own_forward_grads(model, ids, pos, mask=None):
    """Each row's gradient of the model's own loss on its real tokens and their positions, one backward each."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rows = []
    for i in range(ids.shape[0]):
        keep = torch.ones_like(ids[i], dtype=torch.bool) if mask is None else mask[i].bool()
        out = model(input_ids=ids[i][keep][None], labels=ids[i][keep][None], position_ids=pos[i][keep][None])
        rows.append(torch.autograd.grad(out.loss, list(params.values())))
    return {n: torch.stack([r[k] for r in rows]) for k, n in enumerate(params)}


@pytest.mark.parametrize("build", [_gpt2, _llama])
def test_per_sample_gradients_use_the_given_position_ids(build):
    model = build()
    ids, pos = _rows()
    want = _own_forward_grads(model, ids, pos)
    grads, _ = per_sample_gradients(model, ids, ids, position_ids=pos)
    for name, g in want.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-9)


def test_left_padded_rows_keep_their_tokens_positions():
    model = _gpt2()
    ids, pos = _rows()
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    labels = ids.clone()
    labels[mask == 0] = -100
    want = _own_forward_grads(model, ids, pos, mask)
    grads, _ = per_sample_gradients(model, ids, labels, attention_mask=mask, position_ids=pos)
    for name, g in want.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-9)


def test_per_sample_gradients_refuse_position_ids_of_another_shape():
    model = _gpt2()
    ids, pos = _rows()
    with pytest.raises(ValueError, match="position_ids"):
        per_sample_gradients(model, ids, ids, position_ids=pos[:, :5])


def _trainer(tmp_path, model, columns):
    ds = Dataset.from_dict(columns)
    args = PrivateTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=3, dp_clip_norm=1e6, dp_noise_multiplier=0.0,
        max_grad_norm=0, report_to="none", use_cpu=True, max_steps=1, dp_noise_seed=1,
    )  # fmt: skip
    trainer = PrivateTrainer(model=model, args=args, train_dataset=ds)
    return trainer, trainer.data_collator([ds[i] for i in range(len(ds))])


def test_dp_sgd_step_trains_on_the_datasets_position_ids(tmp_path):
    model = _gpt2()
    ids, pos = _rows()
    trainer, batch = _trainer(tmp_path, model, {"input_ids": ids.tolist(), "labels": ids.tolist(),
                                                "position_ids": pos.tolist()})  # fmt: skip
    assert "position_ids" in batch
    want = {n: g.mean(dim=0) for n, g in _own_forward_grads(model, ids, pos).items()}  # the model as trained
    model.zero_grad()
    trainer.training_step(model, batch)
    for name, p in model.named_parameters():
        if p.requires_grad:  # no noise, a clip norm no gradient reaches: the mean of the samples' own gradients
            torch.testing.assert_close(p.grad, want[name], rtol=1e-6, atol=1e-9)


def test_dp_sgd_step_refuses_a_model_input_it_would_drop(tmp_path):
    model = _gpt2()
    ids, _ = _rows()
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    trainer, batch = _trainer(tmp_path, model, {"input_ids": ids.tolist(), "labels": ids.tolist(),
                                                "token_type_ids": types.tolist()})  # fmt: skip
    assert "token_type_ids" in batch  # GPT-2 takes it: a plain step would add its embeddings
    with pytest.raises(ValueError, match="token_type_ids"):
        trainer.training_step(model, batch)
