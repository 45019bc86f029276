"""PNG of the domain- and task-weight trajectories."""

from __future__ import annotations

from ..utils.io import atomic_savefig


def plot_mixture_trajectory(
    trajectory: list[dict], domain_names: list[str], task_names: list[str], path: str, title: str | None = None
) -> str:
    """Plot domain weights (left) and task weights (right) against the optimizer step and save a PNG.

    Args:
        trajectory (`list[dict]`): Records with `step`, `domain_weights` and `task_weights` (as kept by
            `MixtureState.trajectory`).
        domain_names, task_names (`list[str]`): Legend labels in weight order.
        path (`str`): Output file (`.png`).
        title (`str`, *optional*): Figure title.

    Returns:
        The path written.
    """
    if not trajectory:
        raise ValueError("trajectory is empty; nothing to plot.")
    for key, names, arg in (("domain_weights", domain_names, "domain_names"), ("task_weights", task_names, "task_names")):
        for i, record in enumerate(trajectory):
            if len(record[key]) != len(names):  # zip used to draw fewer curves without a word
                raise ValueError(
                    f"{arg} has {len(names)} names ({list(names)}) but trajectory[{i}] has {len(record[key])} {key}; "
                    f"give one name per weight, in weight order."
                )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in trajectory]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    # fixed margins, sized for this figure's weight axes (0..1) and labels: constrained_layout measured every text's
    # extent on every save (~0.25 s of the ~0.55 s a save cost)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.86 if title else 0.92, wspace=0.2)
    for ax, key, names, label in (
        (axes[0], "domain_weights", domain_names, "source domain weights (alpha)"),
        (axes[1], "task_weights", task_names, "target task weights (z)"),
    ):
        for i, name in enumerate(names):
            ax.plot(steps, [r[key][i] for r in trajectory], marker=".", label=name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("weight")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=7, ncol=2 if len(names) > 6 else 1)
        else:
            ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    try:
        atomic_savefig(fig, path, dpi=110)  # temporary file, then rename: a failed save leaves the old PNG intact
    finally:
        plt.close(fig)
    return path
