"""Shared utilities: atomic outputs get the permissions an ordinary write gives (not tempfile's private 0600 / 0700);
the shared evaluation loss refuses to score nothing."""

from __future__ import annotations

import os
import stat

import pytest

from hf_ext.utils import atomic_write_json, atomic_write_text, make_temp_dir


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_are_readable_like_plain_files(tmp_path, umask_022):
    atomic_write_json(str(tmp_path / "a.json"), {"a": 1})
    atomic_write_text(str(tmp_path / "b.txt"), "b")
    with open(tmp_path / "plain.txt", "w") as fh:
        fh.write("c")
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "b.txt") == _mode(tmp_path / "plain.txt") == 0o644


def test_atomic_rewrite_keeps_the_replaced_files_mode(tmp_path, umask_022):
    path = tmp_path / "shared.json"
    atomic_write_json(str(path), {"v": 1})
    os.chmod(path, 0o664)
    atomic_write_json(str(path), {"v": 2})
    assert _mode(path) == 0o664


def test_atomic_write_takes_a_file_name_of_the_full_255_bytes(tmp_path):
    """The temporary file was `.<name>.<random>.tmp`, 14 bytes longer than the name: a name of 242 bytes or more
    failed with ENAMETOOLONG (e.g. a robots.txt snapshot folder's file of a long host)."""
    for name in ("x" * 251 + ".txt", "ü" * 125 + ".txt", "short.txt"):  # 255, 254 bytes (2 per character), short
        atomic_write_text(str(tmp_path / name), "content")
        assert (tmp_path / name).read_text() == "content"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x" * 251 + ".txt", "ü" * 125 + ".txt", "short.txt"])


def test_temp_dirs_renamed_into_place_are_readable(tmp_path, umask_022):
    folder = make_temp_dir(str(tmp_path), ".x-")
    assert _mode(folder) == 0o755


def test_federated_round_folder_and_flower_state_are_readable(tmp_path, umask_022):
    import torch

    from hf_ext.federated.flower_task import save_global_state

    save_global_state({"w": torch.zeros(2)}, str(tmp_path / "final.safetensors"), {"round": 1})
    assert _mode(tmp_path / "final.safetensors") == _mode(tmp_path / "final.safetensors.json") == 0o644


def test_cached_tokenizer_folder_is_readable(tmp_path, monkeypatch, umask_022):
    from hf_ext.data import build_tokenizer

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    build_tokenizer(vocab_size=300)
    (folder,) = (tmp_path / "tokenizers").iterdir()
    assert _mode(folder) == 0o755


def test_eval_loss_of_nothing_is_an_error_not_a_perfect_score():
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.utils import causal_lm_eval_loss

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    empty = datasets.Dataset.from_dict({"input_ids": [], "labels": []})
    with pytest.raises(ValueError, match="empty"):
        causal_lm_eval_loss(model, empty)
    masked = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[-100, -100, -100]]})
    with pytest.raises(ValueError, match="no token to predict"):
        causal_lm_eval_loss(model, masked)
    ids = [[1, 2, 3, 4]]
    loss = causal_lm_eval_loss(model, datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}))
    with torch.no_grad():
        assert loss == pytest.approx(model(input_ids=torch.tensor(ids), labels=torch.tensor(ids)).loss.item(), rel=1e-5)


def test_eval_loss_takes_ragged_last_blocks_and_an_attention_mask():
    """`pack_dataset(..., drop_remainder=False)` leaves shorter last blocks: the loss is the token-weighted mean of
    each block scored alone (was: `torch.tensor` raised on the ragged batch); positions with attention_mask 0 are not
    scored."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.utils import causal_lm_eval_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ).double()
    rows = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15], [16, 17]]
    with torch.no_grad():
        sums = [model(input_ids=torch.tensor([r]), labels=torch.tensor([r])).loss.item() * (len(r) - 1) for r in rows]
    want = sum(sums) / sum(len(r) - 1 for r in rows)
    for batch_size in (1, 3, 4):
        got = causal_lm_eval_loss(model, datasets.Dataset.from_dict({"input_ids": rows}), batch_size=batch_size)
        assert got == pytest.approx(want, rel=1e-6)  # the loss is taken in float32
    # a row stored right-padded with attention_mask 0 scores as its real tokens alone
    padded = {"input_ids": [rows[2] + [0, 0, 0]], "attention_mask": [[1, 1, 1, 0, 0, 0]]}
    assert causal_lm_eval_loss(model, datasets.Dataset.from_dict(padded)) == pytest.approx(sums[2] / 2, rel=1e-6)
    with pytest.raises(ValueError, match="row 0 has 3 input_ids, 2 attention_mask"):
        causal_lm_eval_loss(model, datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1]]}))


def test_eval_loss_of_left_padded_rows_equals_each_row_alone():
    """ev17: left-padded rows (a tokenizer with padding_side="left") were scored as given: the first real token was
    predicted from a pad position that attends to nothing, and positions were shifted by the padding (7.31 against
    7.21 for the rows alone). Now left, right and no padding give the float64 loss of each row evaluated alone."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.utils import causal_lm_eval_loss

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5)  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    ref = LlamaForCausalLM(cfg).double().eval()
    ref.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (12, 7, 4, 2)]
    total = 0.0
    with torch.no_grad():  # each row alone, no padding, float64
        for r in rows:
            logp = torch.log_softmax(ref(input_ids=torch.tensor([r])).logits[0, :-1], -1)
            total -= logp.gather(1, torch.tensor(r[1:])[:, None]).sum().item()
    want = total / sum(len(r) - 1 for r in rows)
    width = max(map(len, rows))

    def padded(side):
        def pad(r, fill):
            return [fill] * (width - len(r)) + r if side == "left" else r + [fill] * (width - len(r))

        return {"input_ids": [pad(r, 0) for r in rows], "attention_mask": [pad([1] * len(r), 0) for r in rows]}

    for side in ("left", "right"):
        for batch_size in (1, 3, 4):
            got = causal_lm_eval_loss(model, datasets.Dataset.from_dict(padded(side)), batch_size=batch_size)
            assert got == pytest.approx(want, rel=1e-5), (side, batch_size)
    # rows padded on different sides in one batch, with a labels column, and a row that is all padding (no token)
    mixed = {k: [*padded("left")[k][:2], *padded("right")[k][2:]] for k in ("input_ids", "attention_mask")}
    mixed = {k: [*v, [0] * width] for k, v in mixed.items()}
    mixed["labels"] = mixed["input_ids"]
    assert causal_lm_eval_loss(model, datasets.Dataset.from_dict(mixed)) == pytest.approx(want, rel=1e-5)
    assert causal_lm_eval_loss(model, datasets.Dataset.from_dict(mixed), batch_size=1) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="no token to predict"):  # nothing but padding
        causal_lm_eval_loss(model, datasets.Dataset.from_dict({"input_ids": [[0, 0, 5]], "attention_mask": [[0, 0, 1]]}))


@pytest.mark.parametrize("mode", ["a", "ab", "r+", "x"])
def test_atomic_open_refuses_modes_that_would_not_write_a_whole_new_file(tmp_path, mode):
    """`atomic_open(path, "a")` replaced the file with the appended text alone (the old content was lost)."""
    from hf_ext.utils.io import atomic_open

    path = tmp_path / "log.txt"
    path.write_text("line1\n")
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic_open(str(path), mode) as fh:
            fh.write("line2\n")
    assert path.read_text() == "line1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_results_are_written_as_strict_json_with_non_finite_numbers_named():
    """A diverged loss (NaN) or the epsilon of a run without noise (inf) made `json.dump` write the bare tokens NaN and
    Infinity, which strict readers (jq, JavaScript, serde) refuse."""
    import json

    import numpy as np
    import torch

    from hf_ext.utils import atomic_write_results, strict_json

    obj = {"loss": float("nan"), "eps": [float("inf"), -float("inf"), 1.5], "n": np.int64(3), "t": torch.tensor(2.0),
           "x": np.float32("nan"), "nested": ({"ok": True, "none": None},)}  # fmt: skip
    assert strict_json(obj) == {"loss": "NaN", "eps": ["Infinity", "-Infinity", 1.5], "n": 3, "t": 2.0, "x": "NaN",
                                "nested": [{"ok": True, "none": None}]}  # fmt: skip
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "results.json")
        atomic_write_results(path, obj)
        text = open(path).read()

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    loaded = json.loads(text, parse_constant=refuse)
    assert float(loaded["loss"]) != float(loaded["loss"]) and float(loaded["eps"][0]) == float("inf")
