"""Pictures of a run: speed-up over eager per case and method, and memory relative to eager.

    python -m contres.bench --plot PATH.png             draws the run it makes
    python -m contres.bench.plot RUN.json OUT.png ...   redraws saved runs (pairs of JSON and PNG), e.g. README's

Reads the JSON of older versions of the benchmark too (rows without the newer keys). matplotlib is imported only
here: `pip install matplotlib` (it comes with contres' "train" extras).
"""
from __future__ import annotations

import argparse
import os
import sys

from .methods import METHODS
from .report import read_json

_COLORS = dict(zip([m for m in METHODS if m != "fused_reduced"],
                   ("#1f77b4", "#6baed6", "#17becf", "#7f7f7f", "#bdbdbd", "#ff7f0e", "#fdae6b", "#2ca02c",
                    "#9467bd", "#c5b0d5")), fused_reduced="#08306b")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("contres.bench: --plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _group_label(row: dict) -> str:
    """A case in two lines (kind, then shape and precision), plus its allocator setting when it is not glibc's."""
    words = row["case"].split()
    shape_at = next((i for i, w in enumerate(words) if w.startswith("B") and w[1:].isdigit()), len(words))
    label = " ".join(words[:shape_at]) + "\n" + " ".join(words[shape_at:])
    if row.get("malloc") not in (None, "default"):
        label += f"\nmalloc {row['malloc']}"
    return label


def _title(env: dict, source: str) -> str:
    devices = ", ".join((env.get("devices") or {}).values()) or "unknown device"
    version = env.get("commit") or (f"contres {env['contres_version']}" if env.get("contres_version")
                                    else f"from {source}")
    return (f"contres on {devices}: speed-up and activation memory against eager\n"
            f"{version} · torch {env.get('torch_version', '?')} · {env.get('date', '')[:10]}")


PANELS = (  # row key, y label, panel height
    ("speedup_fwd_bwd", "speed-up over eager\nforward + backward", 3.2),
    ("speedup_fwd", "speed-up over eager\nforward", 2.2),
    ("mem_ratio", "activation memory / eager's\n(saved for backward + output)", 2.4),
)


def plot_rows(rows: list, env: dict, path: str, source: str = "this run") -> None:
    """Three panels of grouped bars, a group per case and a bar per method: speed-up over eager of forward +
    backward, of the forward alone, and activation memory over eager's. Eager is the dashed line at 1."""
    plt = _pyplot()

    def group(r):
        return r["device"], r["case"], r.get("malloc")
    groups = list(dict.fromkeys(group(r) for r in rows))
    measured = [r for r in rows if r["method"] != "eager" and r.get("speedup_fwd_bwd") is not None]
    names = list(dict.fromkeys(r["method"] for r in measured))
    by_key = {(group(r), r["method"]): r for r in measured}
    labels = [_group_label(next(r for r in rows if group(r) == g)) for g in groups]
    width = 0.8 / max(len(names), 1)
    fig, axes = plt.subplots(len(PANELS), 1, sharex=True, gridspec_kw={"height_ratios": [h for *_, h in PANELS]},
                             layout="constrained", figsize=(max(8.0, 0.42 * len(groups) * max(len(names), 3) + 2), 10))
    for ax, (key, ylabel, _) in zip(axes, PANELS):
        for i, name in enumerate(names):
            points = [(g_index - 0.4 + (i + 0.5) * width, by_key[(g, name)][key])
                      for g_index, g in enumerate(groups) if by_key.get((g, name), {}).get(key) is not None]
            if not points:
                continue
            bars = ax.bar(*zip(*points), width * 0.92, color=_COLORS.get(name, "#8c564b"), label=name)
            ax.bar_label(bars, fmt="%.2f", fontsize=6.5, padding=1, rotation=90)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the bar labels
    no_memory = [n for n in names if all(by_key.get((g, n), {}).get("mem_ratio") is None for g in groups)]
    if no_memory:
        axes[-1].text(0.995, 0.97, "no memory figure: " + ", ".join(no_memory), transform=axes[-1].transAxes,
                      ha="right", va="top", fontsize=7)
    axes[-1].set_xticks(range(len(groups)), labels, fontsize=8)
    handles, names_shown = axes[0].get_legend_handles_labels()
    fig.legend(handles, names_shown, loc="outside lower center", ncol=min(len(names), 8), fontsize=8, frameon=False)
    fig.suptitle(_title(env, source), fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m contres.bench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", metavar="RUN.json OUT.png", help="pairs: a saved run and its picture")
    args = p.parse_args(argv)
    if len(args.files) % 2:
        p.error("give pairs of RUN.json OUT.png")
    for source, out in zip(args.files[::2], args.files[1::2]):
        rows, env = read_json(source)
        plot_rows(rows, env, out, source=os.path.basename(source))
        print(f"wrote {out}", file=sys.stdout)


if __name__ == "__main__":
    main()
