"""Update metrics: pure functions against hand computations, the callback inside a Trainer, the schedule."""

import math

import pytest
import torch
from torch import nn

from hf_ext.optim import (
    TrapezoidSchedule,
    UpdateMetricsCallback,
    angular_update,
    gradient_momentum_cosine,
    l2_update_norm,
    relative_representation_change,
    relative_update_norms,
)


def test_l2_update_norm_hand_computed():
    old = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 0.0]])]
    new = [torch.tensor([1.0, 5.0]), torch.tensor([[4.0, 0.0]])]
    assert l2_update_norm(old, new) == pytest.approx(5.0)


def test_relative_update_norms_hand_computed():
    old = {"w": torch.tensor([[3.0, 4.0]]), "v": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([1.0, 0.0])}
    new = {"w": torch.tensor([[3.0, 5.0]]), "v": torch.tensor([[0.0, 0.0]]), "b": torch.tensor([9.0, 0.0])}
    rel = relative_update_norms(old, new)
    assert rel == pytest.approx({"w": 1 / 5, "v": 1.0})  # per tensor, relative to that tensor's norm; 1-D skipped
    assert relative_update_norms(old, new, min_dim=1)["b"] == pytest.approx(8.0)
    with pytest.raises(ValueError, match="same tensor names"):
        relative_update_norms(old, {"w": new["w"]})


def test_angular_update_hand_computed_rows_and_columns():
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    new = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    ang = angular_update(old, new)
    assert ang[0] == pytest.approx(math.pi / 4)
    assert ang[1] == pytest.approx(0.0, abs=1e-7)
    cols = angular_update(old.t(), new.t(), neuron_dim=1)
    torch.testing.assert_close(cols, ang)


def test_rrc_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w0 = torch.tensor([[2.0, 0.0], [0.0, 2.0]])  # Y = 2X, ||Y||_F = sqrt(8)
    w1 = torch.tensor([[2.0, 1.0], [0.0, 2.0]])  # dY has one entry of 1
    assert relative_representation_change(x, w0, w1) == pytest.approx(1 / math.sqrt(8))
    assert relative_representation_change(x, w0.t(), w1.t(), transposed=True) == pytest.approx(1 / math.sqrt(8))


def test_gradient_momentum_cosine_hand_computed():
    assert gradient_momentum_cosine([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]) == pytest.approx(
        1 / math.sqrt(2)
    )
    assert math.isnan(gradient_momentum_cosine([torch.zeros(2)], [torch.ones(2)]))


def test_trapezoid_schedule_shape():
    s = TrapezoidSchedule(100, warmup_steps=10, cooldown_fraction=0.5)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(30) == 1.0 and s(50) == 1.0
    assert s(75) == pytest.approx(0.5) and s(99) == pytest.approx(0.02)
    assert TrapezoidSchedule(10)(0) == 1.0
    with pytest.raises(ValueError, match="cooldown"):
        TrapezoidSchedule(10, warmup_steps=8, cooldown_fraction=0.5)
    with pytest.raises(ValueError, match="num_training_steps"):
        TrapezoidSchedule(0)


class TinyLM(nn.Module):
    """A minimal model that Trainer accepts: embedding -> Linear -> head, returns a loss."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.fc(self.emb(input_ids))))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def test_callback_values_equal_hand_computation(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_ext.optim import LionAR

    torch.manual_seed(0)
    data = [{"input_ids": torch.randint(0, 32, (8,)), "labels": torch.randint(0, 32, (8,))} for _ in range(16)]
    probe = {"input_ids": torch.randint(0, 32, (2, 8))}
    model = TinyLM()
    cb = UpdateMetricsCallback(probe_batch=probe, every_n_steps=1, plot_path="m.png", log_per_tensor=True)

    # independent recorder of what the callback should see
    class Recorder(UpdateMetricsCallback):
        def __init__(self):
            super().__init__(plot_path=None)
            self.rows = []

        def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
            opt = optimizer.optimizer
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
            g = torch.cat([p.grad.flatten() for p in model.parameters()])
            ms = [opt.state[p].get("exp_avg") for p in model.parameters()]
            self.cos = (
                float("nan")
                if ms[0] is None
                else float(
                    torch.nn.functional.cosine_similarity(g.double(), torch.cat([m.flatten() for m in ms]).double(), 0)
                )
            )
            with torch.no_grad():
                self.x = torch.tanh(model.fc(model.emb(probe["input_ids"])))  # input of `head`
                self.x_fc = model.emb(probe["input_ids"])

        def on_optimizer_step(self, args, state, control, model=None, **kw):
            after = dict(model.named_parameters())
            l2 = math.sqrt(sum(float((after[n].detach() - b).double().pow(2).sum()) for n, b in self.before.items()))
            angles = []
            for n in ("emb.weight", "fc.weight", "head.weight"):
                a, b = self.before[n].double(), after[n].detach().double()
                angles.append(torch.arccos(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).clamp(-1, 1)))
            rr = []
            for n, x in (("fc.weight", self.x_fc), ("head.weight", self.x)):
                w0, w1 = self.before[n].double(), after[n].detach().double()
                x = x.double().reshape(-1, x.shape[-1])
                rr.append(float((x @ (w1 - w0).t()).norm() / (x @ w0.t()).norm()))
            rel = [
                float((after[n].detach().double() - self.before[n].double()).norm() / self.before[n].double().norm())
                for n in ("emb.weight", "fc.weight", "head.weight")
            ]
            self.rows.append(
                {
                    "l2": l2,
                    "rel": sum(rel) / 3,
                    "rel_max": max(rel),
                    "rel_fc": rel[1],
                    "angle": float(torch.cat(angles).mean()),
                    "rrc": sum(rr) / 2,
                    "cos": self.cos,
                }
            )

    rec = Recorder()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        max_grad_norm=0.0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        callbacks=[rec, cb],
        optimizer_cls_and_kwargs=(LionAR, {"lr": 1e-2, "weight_decay": 1.0, "model": model}),
    )
    trainer.train()
    assert len(cb.history) == 3 and len(rec.rows) == 3
    for got, want in zip(cb.history, rec.rows):
        assert got["update/l2_norm"] == pytest.approx(want["l2"], rel=1e-6)
        assert got["update/relative_l2"] == pytest.approx(want["rel"], rel=1e-6)
        assert got["update/relative_l2_max"] == pytest.approx(want["rel_max"], rel=1e-6)
        assert got["update/relative_l2/fc.weight"] == pytest.approx(want["rel_fc"], rel=1e-6)
        assert got["update/angle"] == pytest.approx(want["angle"], rel=1e-6)
        assert got["update/rrc"] == pytest.approx(want["rrc"], rel=1e-6)
        if not math.isnan(want["cos"]):
            assert got["update/grad_momentum_cos"] == pytest.approx(want["cos"], rel=1e-6)
    logged = [r for r in trainer.state.log_history if "update/angle" in r]
    assert len(logged) >= 3
    assert (tmp_path / "m.png").stat().st_size > 1000
