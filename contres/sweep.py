"""State layers vs control layers: ``python -m contres.sweep --out DIR [--quick] [training options]``.

Trains the digits classifier of contres.train over a grid of n_steps (steps, "state layers") and n_controls
(weights in time, "control layers") per ODE block, several seeds each, for one integrator or, with
``--methods euler rk4 leapfrog``, for each of several, and writes
  DIR/results.json      one row per run: method, n_steps, n_controls, seed, test_accuracy, train_loss, params,
                        seconds, loss_curve (mean training cross-entropy per epoch), test_accuracy_curve
  DIR/results.md        mean and standard deviation over the seeds per grid cell
  DIR/accuracy_vs_steps.png, DIR/loss_vs_steps.png   one line per n_controls (and n_controls = n_steps), per method
  DIR/loss_curves.png   mean training loss per epoch, one panel per n_controls (and method)
Every option of contres.train except the grid's own (--n-steps, --n-controls, --seed, --json; --method when
--methods is given) may be added and applies to every run, e.g. ``--interp linear`` or ``--layer double_sym``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from . import train

STEPS = (1, 2, 4, 8)
CONTROLS = (1, 2, 4)
FULL = {"epochs": 20, "seeds": 4}
QUICK = {"epochs": 6, "seeds": 3}
SWEEP_OWNED = ("n_steps", "n_controls", "seed", "json")  # training options the sweep sets per run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m contres.sweep", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False,  # --method and --seed belong to the runs, not --methods/--seeds
                                epilog="Other options are passed to every training run (see python -m contres.train "
                                       "--help).")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quick", action="store_true",
                   help=f"smaller budget on the same grid: {QUICK['epochs']} epochs, {QUICK['seeds']} seeds "
                        f"(default {FULL['epochs']} epochs, {FULL['seeds']} seeds)")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="the n_steps of the grid")
    p.add_argument("--controls", type=int, nargs="+", default=list(CONTROLS),
                   help="the n_controls of the grid (n_controls = n_steps is always added)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (overrides the budget's)")
    p.add_argument("--methods", nargs="+", choices=train.functional.METHODS, default=None,
                   help="compare integrators: the grid for each (default: the runs' --method, euler)")
    return p


def parse_args(argv) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(sweep options, the base training config every run starts from)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    train_parser = train.build_parser()
    unset = object()  # tells "not given" from "given with the default value"
    train_parser.set_defaults(**{name: unset for name in SWEEP_OWNED})
    base = train_parser.parse_args(rest)
    clashes = ["--" + name.replace("_", "-") for name in SWEEP_OWNED if getattr(base, name) is not unset]
    if args.methods is not None and "--method" in rest:
        clashes.append("--method (with --methods)")
    if clashes:
        parser.error(f"{', '.join(clashes)}: set by the sweep itself (use --steps, --controls, --seeds, --out)")
    vars(base).update({name: getattr(train.default_config(), name) for name in SWEEP_OWNED})
    budget = QUICK if args.quick else FULL
    args.seeds = args.seeds if args.seeds is not None else budget["seeds"]
    base.epochs = args.epochs if args.epochs is not None else budget["epochs"]
    base.progress = False  # the sweep shows one bar over the grid
    args.methods = args.methods or [base.method]
    return args, base


def grid(steps, controls, methods=("euler",)) -> list[tuple[str, int, int]]:
    """(method, n_steps, n_controls) cells: steps x controls plus n_controls = n_steps, without repeats, per
    method (in the order given)."""
    cells = sorted({(n, m) for n in steps for m in controls} | {(n, n) for n in steps})
    return [(method, n, m) for method in dict.fromkeys(methods) for n, m in cells]


def run_grid(base: argparse.Namespace, cells, seeds: int, data: train.Data) -> list[dict]:
    from tqdm.auto import tqdm

    rows = []
    jobs = [(method, n, m, s) for method, n, m in cells for s in range(seeds)]
    with tqdm(jobs, desc="sweep", dynamic_ncols=True) as bar:
        for method, n_steps, n_controls, seed in bar:
            bar.set_postfix(method=method, n_steps=n_steps, n_controls=n_controls, seed=seed)
            config = argparse.Namespace(**{**vars(base), "method": method, "n_steps": n_steps,
                                           "n_controls": n_controls, "seed": seed})
            result = train.run(config, data=data, log=lambda *_: None)
            rows.append({"method": method, "n_steps": n_steps, "n_controls": n_controls, "seed": seed,
                         **{k: result[k] for k in ("test_accuracy", "train_loss", "params", "seconds",
                                                   "loss_curve", "test_accuracy_curve", "backend")}})
    return rows


def _mean_std(values) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (method, n_steps, n_controls): mean and std over seeds of accuracy, loss and seconds."""
    cell_of = lambda r: (r.get("method", "euler"), r["n_steps"], r["n_controls"])  # noqa: E731
    cells = list(dict.fromkeys(cell_of(r) for r in rows))
    out = []
    for method, n, m in cells:
        group = [r for r in rows if cell_of(r) == (method, n, m)]
        entry = {"method": method, "n_steps": n, "n_controls": m, "seeds": len(group),
                 "params": group[0]["params"]}
        for key in ("test_accuracy", "train_loss", "seconds"):
            entry[key], entry[key + "_std"] = _mean_std([r[key] for r in group])
        curves = [r["loss_curve"] for r in group]
        entry["loss_curve"] = [statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))]
        out.append(entry)
    return out


def markdown_table(summary: list[dict], base: argparse.Namespace) -> str:
    lines = [f"Digits, {base.epochs} epochs, layer={base.layer}, activation={base.activation}, "
             f"interp={base.interp}, block_norm={base.block_norm}, widths={base.widths}; mean ± std over "
             f"{summary[0]['seeds']} seeds.", "",
             "| method | n_steps | n_controls | test accuracy (%) | final train loss | params | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        lines.append(f"| {e['method']} | {e['n_steps']} | {e['n_controls']} | {100 * e['test_accuracy']:.2f} ± "
                     f"{100 * e['test_accuracy_std']:.2f} | {e['train_loss']:.4f} ± {e['train_loss_std']:.4f} | "
                     f"{e['params']} | {e['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def series(summary: list[dict], controls) -> dict[str, list[dict]]:
    """Plot series: 'n_controls = M' for each M of the grid, and 'n_controls = n_steps', per method (named in
    the label when there are several)."""
    methods = list(dict.fromkeys(e["method"] for e in summary))
    out = {}
    for method in methods:
        prefix = f"{method}, " if len(methods) > 1 else ""
        mine = [e for e in summary if e["method"] == method]
        for m in controls:
            out[f"{prefix}n_controls = {m}"] = [e for e in mine if e["n_controls"] == m]
        out[f"{prefix}n_controls = n_steps"] = [e for e in mine if e["n_controls"] == e["n_steps"]]
    return {label: entries for label, entries in out.items() if entries}


def plot(summary: list[dict], controls, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = series(summary, controls)
    steps = sorted({e["n_steps"] for e in summary})
    written = []
    for key, ylabel, scale, name in (("test_accuracy", "test accuracy (%)", 100.0, "accuracy_vs_steps.png"),
                                     ("train_loss", "final training loss", 1.0, "loss_vs_steps.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, (label, entries) in enumerate(lines.items()):
            style = "--" if label.endswith("n_steps") else "-"
            dodge = 2 ** (0.04 * (i - (len(lines) - 1) / 2))  # side by side, so the error bars stay readable
            ax.errorbar([e["n_steps"] * dodge for e in entries], [scale * e[key] for e in entries],
                        yerr=[scale * e[key + "_std"] for e in entries], fmt="o" + style, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(n) for n in steps])
        ax.minorticks_off()
        ax.set_xlabel("n_steps (state layers per block)")
        ax.set_ylabel(ylabel)
        if key == "train_loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(title="mean ± std over the seeds", fontsize=8, title_fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)

    fig, axes = plt.subplots(1, len(lines), figsize=(4 * len(lines), 3.6), sharey=True, squeeze=False)
    for ax, (label, entries) in zip(axes[0], lines.items()):
        for e in entries:
            epochs = range(1, len(e["loss_curve"]) + 1)
            ax.plot(epochs, e["loss_curve"], marker=".", label=f"n_steps = {e['n_steps']}")
        ax.set_title(label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("training loss (mean over seeds)")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)
    written.append(out / "loss_curves.png")
    return written


def main(argv=None) -> dict:
    args, base = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = grid(args.steps, args.controls, args.methods)
    data = train.load_data(base)
    print(f"contres.sweep: {len(cells)} cells x {args.seeds} seeds, {base.epochs} epochs each -> {out}")
    start = time.perf_counter()
    rows = run_grid(base, cells, args.seeds, data)
    summary = summarize(rows)
    payload = {"config": {k: v for k, v in vars(base).items() if k not in ("json", "progress")},
               "seeds": args.seeds, "seconds": time.perf_counter() - start, "rows": rows, "summary": summary}
    train.write_json(out / "results.json", payload)
    table = markdown_table(summary, base)
    (out / "results.md").write_text(table)
    plots = plot(summary, args.controls, out)
    print(table)
    print(f"{len(rows)} runs in {payload['seconds']:.0f} s; wrote {out / 'results.json'}, {out / 'results.md'}, "
          + ", ".join(p.name for p in plots))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
