"""A sweep's plot: one line per (device, dtype) of a figure against the TP degree (log axis)."""

from __future__ import annotations

from collections.abc import Callable

from tilesim.profiler.output import atomic_save, image_format


def plot_by_tp(
    rows: list[dict], path: str, y: Callable[[dict], float], *, xlabel: str, ylabel: str, title: str,
    decorate: Callable | None = None,
) -> None:  # fmt: skip
    """`y(row)` for the rows that ran, by TP degree; `decorate(ax)` adds to the axes."""
    from tilesim.profiler.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for device, dtype in dict.fromkeys((r["device"], r["dtype"]) for r in rows):
        mine = sorted((r for r in rows if (r["device"], r["dtype"]) == (device, dtype) and r["fits"]),
                      key=lambda r: r["tp"])  # fmt: skip
        if mine:
            ax.plot([r["tp"] for r in mine], [y(r) for r in mine], marker="o", label=f"{device} {dtype}")
    if decorate:
        decorate(ax)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(path, lambda temporary: fig.savefig(temporary, dpi=120, format=image_format(path)))
    plt.close(fig)
