"""Pass-34 mutation run (mu39): pins for the no-outer-step warning and the outer_dataset refusal."""

import logging
from types import SimpleNamespace

import pytest


@pytest.mark.parametrize(
    ("mode", "global_step", "max_steps", "every", "due", "warned"),
    [
        ("recompute", 3, 4, 4, False, False),  # resumed at 3: the outer step of step 4 still falls
        ("recompute", 4, 7, 4, False, True),  # resumed at 4: the next one would be step 8
        ("recompute", 0, 4, 4, False, False),
        ("recompute", 0, 3, 4, False, True),
        ("recompute", 5, 8, 4, False, False),
        ("next_step", 0, 4, 4, False, True),  # step 4's outer step would run at step 5
        ("next_step", 0, 5, 4, False, False),
        ("next_step", 4, 7, 4, True, False),  # the checkpoint left one pending: it runs at step 5
        ("next_step", 4, 7, 4, False, True),
    ],
)
def test_the_no_outer_step_warning_counts_the_steps_left(mode, global_step, max_steps, every, due, warned, caplog):
    from hf_ext.neuralgrok.trainer import _OuterStepCallback

    trainer = SimpleNamespace(
        args=SimpleNamespace(outer_every=every, outer_gradient=mode), _outer_due=due, _broadcast_amplifier=lambda: None
    )
    state = SimpleNamespace(global_step=global_step, max_steps=max_steps)
    with caplog.at_level(logging.WARNING, logger="hf_ext.neuralgrok.trainer"):
        _OuterStepCallback(trainer).on_train_begin(None, state, None)
    said = [r.getMessage() for r in caplog.records if "no amplifier (outer) update" in r.getMessage()]
    assert bool(said) == warned, said


class _SizedRows:
    """Has a length but no indexing (like a set of rows)."""

    def __init__(self, rows):
        self.rows = list(rows)

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)


def test_a_sized_but_not_indexable_outer_dataset_is_refused_by_name(tiny_amplified_trainer, tmp_path):
    trainer = tiny_amplified_trainer(tmp_path)
    with pytest.raises(TypeError, match="outer_dataset must be a map-style dataset.*_SizedRows"):
        type(trainer)(
            model=trainer.model,
            args=trainer.args,
            train_dataset=trainer.train_dataset,
            outer_dataset=_SizedRows(trainer.outer_dataset),
        )
