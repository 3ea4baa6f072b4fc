"""Shared matplotlib set-up of the benchmark scripts: one panel per setting, accuracy against shift share."""

from __future__ import annotations


def panels(count: int):
    """``(fig, axes)`` with ``count`` side-by-side panels, or ``None`` when matplotlib is missing (a note is printed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return None
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.6), squeeze=False)
    return fig, list(axes[0])


def style_accuracy_axis(ax, title: str) -> None:
    """Title, the shift-share / accuracy labels and a light grid."""
    ax.set_title(title)
    ax.set_xlabel("shift share of SFC elements (%)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)


def save(fig, axes, path) -> None:
    """Legend on the first panel, tight layout, written to ``path``."""
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
