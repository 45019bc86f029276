"""PNG curves of the FP8 health monitor."""

from __future__ import annotations

from ..utils.io import atomic_savefig


def plot_kurtosis(history: list[dict], path: str, title: str | None = None) -> str:
    """Save a PNG of the layer-averaged kurtosis of every monitored site over training steps (log scale).

    Args:
        history (`list[dict]`): [`Fp8HealthCallback.history`] (records with `step` and `"<site>/kurtosis/avg"`).
        path (`str`): Output file (`.png`).
        title (`str`, *optional*): Figure title.

    Returns:
        `str`: `path`.
    """
    if not history:
        raise ValueError("plot_kurtosis: history is empty; monitor at least one step (every_n_steps <= max_steps).")
    if not str(path).endswith(".png"):
        raise ValueError(f"plot_kurtosis: path={path!r} must end with .png.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = sorted({k.split("/")[0] for rec in history for k in rec if k.endswith("/kurtosis/avg")})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for site in sites:
        pts = [(r["step"], r[f"{site}/kurtosis/avg"]) for r in history if f"{site}/kurtosis/avg" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=site)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("kurtosis mean(x^4)/mean(x^2)^2 (avg over layers)")
    ax.axhline(3.0, color="gray", lw=0.8, ls="--")
    ax.set_title(title or "Activation kurtosis per site")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    try:
        atomic_savefig(fig, str(path), dpi=110)  # a failed save leaves an existing file as it was
    finally:
        plt.close(fig)
    return path
