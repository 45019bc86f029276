"""A checkpoint saved again over a complete one of the same step (a run redoing its last steps from an earlier
checkpoint, as the finished-run refusal suggests) is incomplete until its new `trainer_state.json` is written.

Before, the old `trainer_state.json` stayed while the other files were overwritten in place: a save interrupted there
(a kill, a full disk) left a folder that still looked complete, and the next bare `--resume_from_checkpoint` picked
it and failed in torch's loader ("PytorchStreamReader failed reading zip archive") or mixed two saves. (rs38 F1)
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from hf_ext.utils.resume import last_complete_checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts"))
from loss_window_unlogged_end import _trainer as _builder  # noqa: E402


def _trainer(out):
    return _builder(str(out), logging_steps=500)[0]


def test_a_save_interrupted_over_a_complete_checkpoint_leaves_it_incomplete(tmp_path, monkeypatch):
    _trainer(tmp_path).train()
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-4")
    save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        if isinstance(f, str) and f.endswith(os.path.join("checkpoint-4", "optimizer.pt")):
            with open(f, "wb") as fh:
                fh.write(b"PK")  # what was written when the process died
            raise KeyboardInterrupt
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):  # redo steps 3-4 from checkpoint-2; the re-save of checkpoint-4 dies
        _trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    monkeypatch.setattr(torch, "save", save)
    assert not (tmp_path / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    _trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))  # and a resume completes it
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")
