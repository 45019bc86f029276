"""bi29 audit: the update-metrics figure is written atomically."""

import pytest


def test_plot_update_metrics_failed_write_leaves_no_truncated_figure(tmp_path, monkeypatch):
    """F5: `plot_update_metrics` (and `UpdateMetricsCallback` at the end of training) wrote the PNG in place: a write
    that failed or was killed half-way left a truncated figure at `path` that looked complete."""
    from matplotlib.figure import Figure

    from hf_ext.optim import plot_update_metrics

    def half_written(self, fname, **kwargs):
        if isinstance(fname, str):
            with open(fname, "wb") as fh:
                fh.write(b"\x89PNG\r\n")
        else:
            fname.write(b"\x89PNG\r\n")
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_written)
    rows = [{"step": s, "update/relative_l2": 0.1, "update/angle": 0.2, "update/rrc": 0.3,
             "update/grad_momentum_cos": 0.5} for s in (1, 2)]  # fmt: skip
    path = tmp_path / "plots" / "update_metrics.png"
    with pytest.raises(OSError, match="No space left"):
        plot_update_metrics({"run": rows}, str(path))
    assert not path.exists()
    assert list(path.parent.iterdir()) == []  # nor a temporary file beside it
