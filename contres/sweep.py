"""State layers vs control layers: ``python -m contres.sweep --out DIR [--quick] [options] [training options]``.

Trains the classifier of contres.train over a grid of n_steps (steps, "state layers") and n_controls (weights in
time, "control layers") per ODE block, several seeds each, on the digits16 task by default (few labelled digits,
16x16, shifted and noisy: contres.train.load_digits16; no download). ``--methods euler rk4:1,2 leapfrog:1,2,4``
adds integrators, each on the n_steps after its colon (default: --steps). ``--multilevel E1 E2 ...`` adds, for each
method's finest cells, multilevel runs: trained on a grid 2^L times coarser and refined (contres.train
--refine-at) after each listed epoch, to be compared with the same network trained on the fine grid from the start.
``--jobs 2`` trains two runs at a time (one thread each); ``--clock cpu`` puts the runs' CPU time instead of
wall-clock time on the time axes (the same on a free core; not inflated by other work on a busy machine);
``--replot`` redraws the tables and plots from DIR/results.json. The sweep writes
  DIR/results.json        the runs (per epoch: training loss, wall-clock and CPU training time, n_steps; test
                          accuracy at the evaluated epochs) and the summary per cell (mean and 95 % interval over
                          the seeds)
  DIR/results.md          the tables: final test accuracy, training loss and seconds per cell; multilevel against
                          the fine grid at equal training time; differences paired by seed (more layers, more
                          parameters, multilevel)
  DIR/accuracy_vs_steps.png, DIR/loss_vs_steps.png   final values against n_steps, one line per n_controls
  DIR/convergence_<method>.png   training loss and test accuracy against epoch and against training seconds,
                          one column per n_controls, one line per n_steps, 95 % bands
  DIR/multilevel.png      multilevel against the fine grid from the start: loss and accuracy against seconds
Every option of contres.train except those the sweep sets per run (--n-steps, --n-controls, --seed, --refine-at,
--json; --method when --methods is given) may be added and applies to every run, e.g. ``--interp linear``. The
sweep's own defaults for the training runs: --dataset digits16 --batch-size 32 --eval-every 5.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from . import train

STEPS = (1, 2, 4, 8)
CONTROLS = (1, 2, 4)
FULL = {"epochs": 20, "seeds": 5}
QUICK = {"epochs": 6, "seeds": 3}
SWEEP_OWNED = ("n_steps", "n_controls", "seed", "refine_at", "json")  # training options the sweep sets per run
TRAINING_DEFAULTS = {"dataset": "digits16", "batch_size": 32, "eval_every": 5}
STAGES = {"euler": 1, "leapfrog": 1, "rk4": 4}  # evaluations of f per step: the cost of a cell, for scheduling
# the training clocks a run records: (its curve per epoch, its total in a row)
CLOCKS = {"wall": ("seconds_curve", "train_seconds"), "cpu": ("cpu_seconds_curve", "train_cpu_seconds")}
CLOCK_LABELS = {"wall": "training seconds", "cpu": "training CPU seconds"}


def method_spec(text: str) -> tuple[str, tuple[int, ...] | None]:
    """'rk4' -> ('rk4', None) (the sweep's --steps); 'rk4:1,2' -> ('rk4', (1, 2))."""
    method, _, steps = text.partition(":")
    if method not in train.functional.METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {method!r}; expected one of {train.functional.METHODS}, "
                                         "optionally with its n_steps, e.g. rk4:1,2")
    if not steps:
        return method, None
    try:
        values = tuple(int(n) for n in steps.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the n_steps after the colon must be positive integers "
                                         "separated by commas, e.g. rk4:1,2")
    return method, values


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
                   help="the n_controls of the grid (n_controls = n_steps is always added; with constant "
                        "interpolation, n_controls > n_steps is left out: those controls are never used)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per cell (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (overrides the budget's)")
    p.add_argument("--methods", nargs="+", type=method_spec, default=None, metavar="METHOD[:STEPS]",
                   help="integrators to compare, each on the grid, optionally on its own n_steps (rk4:1,2); "
                        "default: the runs' --method (euler)")
    p.add_argument("--multilevel", type=int, nargs="+", default=None, metavar="EPOCH",
                   help="also train each method's finest cells by multilevel training, refined after each of "
                        "these epochs (contres.train --refine-at), when its finest n_steps is divisible by 2^L")
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (processes)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default=None,
                   help="the time axis of the plots and tables: wall-clock seconds (default), or the CPU time of "
                        "each run's process, which a busy machine does not inflate (each digits run has one thread)")
    p.add_argument("--replot", action="store_true",
                   help="only redraw results.md and the plots from the --out folder's results.json")
    return p


def parse_args(argv) -> tuple[argparse.Namespace, argparse.Namespace]:
    """(sweep options, the base training config every run starts from)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    train_parser = train.build_parser()
    unset = object()  # tells "not given" from "given with the default value"
    train_parser.set_defaults(**TRAINING_DEFAULTS, **{name: unset for name in SWEEP_OWNED})
    base = train_parser.parse_args(rest)
    clashes = ["--" + name.replace("_", "-") for name in SWEEP_OWNED if getattr(base, name) is not unset]
    if args.methods is not None and "--method" in rest:
        clashes.append("--method (with --methods)")
    if clashes:
        parser.error(f"{', '.join(clashes)}: set by the sweep itself (use --steps, --controls, --seeds, "
                     "--multilevel, --out)")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    vars(base).update({name: getattr(train.default_config(), name) for name in SWEEP_OWNED})
    budget = QUICK if args.quick else FULL
    args.seeds = args.seeds if args.seeds is not None else budget["seeds"]
    base.epochs = args.epochs if args.epochs is not None else budget["epochs"]
    base.progress = False  # the sweep shows one bar over the grid
    if args.jobs > 1 and base.threads is None and base.dataset not in ("digits", "digits16"):
        base.threads = max(1, (os.cpu_count() or 1) // args.jobs)  # the runs share the cores
    args.methods = args.methods or [(base.method, None)]
    if args.multilevel is not None:
        probe = argparse.Namespace(**{**vars(base), "n_steps": 2 ** len(args.multilevel), "n_controls": 1,
                                      "refine_at": args.multilevel})
        try:
            train.levels(probe)
        except SystemExit as exc:
            parser.error(f"--multilevel: {exc}")
    return args, base


def grid(steps, controls, methods=(("euler", None),), interp: str = "constant") -> list[tuple[str, int, int]]:
    """(method, n_steps, n_controls) cells: steps x controls plus n_controls = n_steps, without repeats, per
    method (in the order given; a method's own steps replace `steps`). With constant interpolation, n_controls >
    n_steps is left out: the extra controls are never used, so such a cell repeats n_controls = n_steps."""
    out = []
    for method, own in dict.fromkeys(_pairs(methods)):
        cells = {(n, m) for n in (own or steps) for m in controls if interp != "constant" or m <= n}
        out += [(method, n, m) for n, m in sorted(cells | {(n, n) for n in own or steps})]
    return out


def _pairs(methods):
    """Accepts ('euler', 'rk4') as well as (('euler', None), ('rk4', (1, 2)))."""
    return [(m, None) if isinstance(m, str) else m for m in methods]


def multilevel_cells(cells, refine_at) -> list[tuple[str, int, int]]:
    """The cells at each method's largest n_steps, where it is divisible by 2^len(refine_at)."""
    if not refine_at:
        return []
    finest = {}
    for method, n, _ in cells:
        finest[method] = max(n, finest.get(method, 0))
    return [(method, n, m) for method, n, m in cells
            if n == finest[method] and n % 2 ** len(refine_at) == 0]


# ---------------------------------------------------------------------------------------------- running


def _job_config(base: argparse.Namespace, job: dict) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(base), "method": job["method"], "n_steps": job["n_steps"],
                                 "n_controls": job["n_controls"], "seed": job["seed"],
                                 "refine_at": job["refine_at"]})


def _run_job(base: argparse.Namespace, job: dict, data: train.Data) -> dict:
    result = train.run(_job_config(base, job), data=data, log=lambda *_: None)
    keys = ("test_accuracy", "train_loss", "params", "seconds", "loss_curve", "seconds_curve", "cpu_seconds_curve",
            "steps_curve", "test_accuracy_curve", "test_epochs", "backend")
    totals = {total: result[curve][-1] if result[curve] else 0.0 for curve, total in CLOCKS.values()}
    return {**job, **totals, **{k: result[k] for k in keys}}


_worker_data: train.Data | None = None


def _init_worker(data: train.Data) -> None:
    global _worker_data
    _worker_data = data


def _run_in_worker(base: argparse.Namespace, job: dict) -> dict:
    return _run_job(base, job, _worker_data)


def jobs_of(cells, ml_cells, refine_at, seeds: int) -> list[dict]:
    jobs = [{"method": method, "schedule": "fixed", "n_steps": n, "n_controls": m, "refine_at": None, "seed": s}
            for method, n, m in cells for s in range(seeds)]
    jobs += [{"method": method, "schedule": "multilevel", "n_steps": n, "n_controls": m,
              "refine_at": list(refine_at), "seed": s} for method, n, m in ml_cells for s in range(seeds)]
    return jobs


def run_jobs(base: argparse.Namespace, jobs: list[dict], data: train.Data, n_workers: int = 1) -> list[dict]:
    """Every job's row, in the order of `jobs`. With several workers (processes: forked on Linux, which share the
    data and start at once; spawned elsewhere) the costliest jobs start first, so that the last ones finish
    together."""
    from tqdm.auto import tqdm

    rows = [None] * len(jobs)
    with tqdm(total=len(jobs), desc="sweep", dynamic_ncols=True) as bar:
        if n_workers == 1:
            for i, job in enumerate(jobs):
                bar.set_postfix(method=job["method"], n_steps=job["n_steps"], n_controls=job["n_controls"],
                                seed=job["seed"])
                rows[i] = _run_job(base, job, data)
                bar.update()
            return rows
        order = sorted(range(len(jobs)), key=lambda i: -STAGES.get(jobs[i]["method"], 1) * jobs[i]["n_steps"])
        context = get_context("fork" if sys.platform == "linux" else "spawn")
        with ProcessPoolExecutor(n_workers, mp_context=context, initializer=_init_worker,
                                 initargs=(data,)) as pool:
            futures = {pool.submit(_run_in_worker, base, jobs[i]): i for i in order}
            for future in as_completed(futures):
                rows[futures[future]] = future.result()
                bar.update()
    return rows


# ---------------------------------------------------------------------------------------------- statistics


def _t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with df degrees of freedom (scipy comes with scikit-learn)."""
    try:
        from scipy.stats import t
    except ImportError:  # the normal quantile: a slightly narrow interval for few seeds
        return statistics.NormalDist().inv_cdf(0.975)
    return float(t.ppf(0.975, df))


def mean_ci(values) -> tuple[float, float]:
    """(mean, half-width of its 95 % confidence interval): t quantile x standard error; 0 for one value."""
    values = list(values)
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, _t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def _cell_key(row: dict) -> tuple:
    return row.get("method", "euler"), row.get("schedule", "fixed"), row["n_steps"], row["n_controls"]


def _curve(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    length = min(len(r[key]) for r in rows)
    pairs = [mean_ci(r[key][i] for r in rows) for i in range(length)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def summarize(rows: list[dict], clock: str = "wall") -> list[dict]:
    """One entry per (method, schedule, n_steps, n_controls): mean and 95 % interval over the seeds of the final
    test accuracy, training loss and seconds, and of the curves per epoch (the clock: mean over the seeds).
    `clock` ('wall' or 'cpu', see CLOCKS) is the time in train_seconds and seconds_curve."""
    curve_key, total_key = CLOCKS[clock]
    out = []
    for key in dict.fromkeys(map(_cell_key, rows)):
        group = [r for r in rows if _cell_key(r) == key]
        method, schedule, n, m = key
        entry = {"method": method, "schedule": schedule, "n_steps": n, "n_controls": m, "seeds": len(group),
                 "params": group[0]["params"], "refine_at": group[0].get("refine_at"), "clock": clock}
        for name in ("test_accuracy", "train_loss", "seconds"):
            entry[name], entry[name + "_ci"] = mean_ci(r[name] for r in group)
        entry["train_seconds"], entry["train_seconds_ci"] = mean_ci(r[total_key] for r in group)
        entry["loss_curve"], entry["loss_curve_ci"] = _curve(group, "loss_curve")
        entry["seconds_curve"], _ = _curve(group, curve_key)
        entry["test_accuracy_curve"], entry["test_accuracy_curve_ci"] = _curve(group, "test_accuracy_curve")
        entry["test_epochs"] = group[0]["test_epochs"][:len(entry["test_accuracy_curve"])]
        entry["steps_curve"] = group[0]["steps_curve"]
        out.append(entry)
    return out


def loss_at(entry: dict, seconds: float) -> float:
    """The cell's mean training loss at `seconds` of training, linear in time between epochs (nan outside)."""
    xs, ys = entry["seconds_curve"], entry["loss_curve"]
    if not xs or seconds < xs[0] or seconds > xs[-1]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= seconds <= x1:
            return y0 + (y1 - y0) * (seconds - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[0]


def multilevel_pairs(summary: list[dict]) -> list[tuple[dict, dict]]:
    """(multilevel entry, the same method and final grid trained fixed from the start)."""
    fixed = {(e["method"], e["n_steps"], e["n_controls"]): e for e in summary if e["schedule"] == "fixed"}
    return [(e, fixed[e["method"], e["n_steps"], e["n_controls"]]) for e in summary
            if e["schedule"] == "multilevel" and (e["method"], e["n_steps"], e["n_controls"]) in fixed]


def paired_differences(rows: list[dict]) -> list[dict]:
    """Per-seed differences between cells that differ in one choice. A seed fixes the order of the batches (and
    the random stream the initialisation draws from), so such differences vary far less than the cells do.

    For each method: more layers, (n_steps, 1) minus (smallest n_steps, 1), the same parameters; more
    parameters, (n_steps, n_steps) minus (n_steps, 1), the same steps; and each multilevel cell minus the same
    network trained on its fine grid from the start. Mean and 95 % interval of the differences of the final
    training loss and test accuracy over the seeds both cells ran, and in how many seeds the loss went down and
    the accuracy up."""
    runs: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        runs.setdefault(_cell_key(r), {})[r["seed"]] = r
    comparisons = []
    for method in dict.fromkeys(key[0] for key in runs):
        steps = sorted({key[2] for key in runs if key[:2] == (method, "fixed")})
        comparisons += [("more layers", (method, "fixed", n, 1), (method, "fixed", steps[0], 1)) for n in steps[1:]]
        comparisons += [("more parameters", (method, "fixed", n, n), (method, "fixed", n, 1)) for n in steps[1:]]
    comparisons += [("multilevel", key, (key[0], "fixed", *key[2:])) for key in runs if key[1] == "multilevel"]
    out = []
    for what, cell, against in comparisons:
        if cell not in runs or against not in runs:
            continue
        seeds = sorted(set(runs[cell]) & set(runs[against]))
        loss = [runs[cell][s]["train_loss"] - runs[against][s]["train_loss"] for s in seeds]
        accuracy = [runs[cell][s]["test_accuracy"] - runs[against][s]["test_accuracy"] for s in seeds]
        entry = {"comparison": what, "cell": list(cell), "against": list(against), "seeds": len(seeds),
                 "loss_lower": sum(d < 0 for d in loss), "accuracy_higher": sum(d > 0 for d in accuracy)}
        entry["train_loss_diff"], entry["train_loss_diff_ci"] = mean_ci(loss)
        entry["test_accuracy_diff"], entry["test_accuracy_diff_ci"] = mean_ci(accuracy)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------- report


def describe(base: argparse.Namespace, seeds: int) -> str:
    return (f"{base.dataset}, {base.epochs} epochs, batch {base.batch_size}, lr {base.lr}, widths={base.widths}, "
            f"layer={base.layer}, activation={base.activation}, interp={base.interp}, "
            f"block_norm={base.block_norm}; mean ± 95 % interval over {seeds} seeds")


def _pm(mean: float, ci: float, scale: float = 1.0, digits: int = 2) -> str:
    return f"{scale * mean:.{digits}f} ± {scale * ci:.{digits}f}"


def markdown_table(summary: list[dict], base: argparse.Namespace, seeds: int) -> str:
    clock = "wall-clock time" if summary[0]["clock"] == "wall" else "CPU time of the run's process"
    lines = [describe(base, seeds) + f". Seconds: training {clock}, without evaluation.", "",
             "| method | schedule | n_steps | n_controls | test accuracy (%) | final train loss | params | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        schedule = e["schedule"] if e["schedule"] == "fixed" else "multilevel " + "→".join(
            str(n) for n in dict.fromkeys(e["steps_curve"]))
        lines.append(f"| {e['method']} | {schedule} | {e['n_steps']} | {e['n_controls']} | "
                     f"{_pm(e['test_accuracy'], e['test_accuracy_ci'], 100)} | "
                     f"{_pm(e['train_loss'], e['train_loss_ci'], digits=4)} | {e['params']} | "
                     f"{_pm(e['train_seconds'], e['train_seconds_ci'], digits=1)} |")
    pairs = multilevel_pairs(summary)
    if pairs:
        lines += ["", "Multilevel training against the fine grid trained from the start: the fixed run's mean "
                  "training loss when it has trained as long as the multilevel run took (interpolated between "
                  "epochs), and each at its end.", "",
                  "| method | n_steps | n_controls | multilevel: seconds | loss | test accuracy (%) | "
                  "fixed: loss at those seconds | seconds | loss | test accuracy (%) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for ml, fixed in pairs:
            lines.append(f"| {ml['method']} | {ml['n_steps']} | {ml['n_controls']} | {ml['train_seconds']:.1f} | "
                         f"{_pm(ml['train_loss'], ml['train_loss_ci'], digits=4)} | "
                         f"{_pm(ml['test_accuracy'], ml['test_accuracy_ci'], 100)} | "
                         f"{_or_dash(loss_at(fixed, ml['train_seconds']))} | {fixed['train_seconds']:.1f} | "
                         f"{_pm(fixed['train_loss'], fixed['train_loss_ci'], digits=4)} | "
                         f"{_pm(fixed['test_accuracy'], fixed['test_accuracy_ci'], 100)} |")
    return "\n".join(lines) + "\n"


def _cell_name(key) -> str:
    method, schedule, n, m = key
    return f"{method} ({n}, {m})" + (" multilevel" if schedule == "multilevel" else "")


def paired_table(paired: list[dict]) -> str:
    if not paired:
        return ""
    lines = ["Paired by seed: the difference of the final values between two cells (n_steps, n_controls) that "
             "differ in one choice, mean ± 95 % interval over the seeds, and in how many seeds the training loss "
             "went down / the test accuracy up.", "",
             "| comparison | cell | against | Δ final train loss | loss down | Δ test accuracy (points) | "
             "accuracy up |", "|---|---|---|---:|---:|---:|---:|"]
    for d in paired:
        lines.append(f"| {d['comparison']} | {_cell_name(d['cell'])} | {_cell_name(d['against'])} | "
                     f"{_pm(d['train_loss_diff'], d['train_loss_diff_ci'], digits=4)} | "
                     f"{d['loss_lower']}/{d['seeds']} | "
                     f"{_pm(d['test_accuracy_diff'], d['test_accuracy_diff_ci'], 100)} | "
                     f"{d['accuracy_higher']}/{d['seeds']} |")
    return "\n".join(lines) + "\n"


def _or_dash(loss: float) -> str:
    return "–" if math.isnan(loss) else f"{loss:.4f}"


def series(summary: list[dict], controls) -> dict[str, list[dict]]:
    """Fixed-schedule plot series: 'n_controls = M' for each M of the grid, and 'n_controls = n_steps', per method
    (named in the label when there are several)."""
    fixed = [e for e in summary if e["schedule"] == "fixed"]
    methods = list(dict.fromkeys(e["method"] for e in fixed))
    out = {}
    for method in methods:
        prefix = f"{method}, " if len(methods) > 1 else ""
        mine = [e for e in fixed if e["method"] == method]
        for m in controls:
            out[f"{prefix}n_controls = {m}"] = [e for e in mine if e["n_controls"] == m]
        out[f"{prefix}n_controls = n_steps"] = [e for e in mine if e["n_controls"] == e["n_steps"]]
    return {label: entries for label, entries in out.items() if entries}


def _band(ax, x, mean, ci, scale=1.0, **style):
    (line,) = ax.plot(x, [scale * v for v in mean], **style)
    ax.fill_between(x, [scale * (v - c) for v, c in zip(mean, ci)], [scale * (v + c) for v, c in zip(mean, ci)],
                    color=line.get_color(), alpha=0.15, linewidth=0)
    return line


def _plot_final(plt, summary, controls, steps, out: Path) -> list[Path]:
    """Final test accuracy and training loss against n_steps: one panel per method, one line per n_controls."""
    methods = list(dict.fromkeys(e["method"] for e in summary if e["schedule"] == "fixed"))
    labels = [f"n_controls = {m}" for m in controls] + ["n_controls = n_steps"]
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    written = []
    for key, ylabel, scale, name in (("test_accuracy", "final test accuracy (%)", 100.0, "accuracy_vs_steps.png"),
                                     ("train_loss", "final training loss", 1.0, "loss_vs_steps.png")):
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods) + 1, 4), sharey=True, squeeze=False)
        for ax, method in zip(axes[0], methods):
            lines = {label.removeprefix(f"{method}, "): entries
                     for label, entries in series(summary, controls).items()
                     if all(e["method"] == method for e in entries)}
            for i, (label, entries) in enumerate(lines.items()):
                dodge = 2 ** (0.03 * (i - (len(lines) - 1) / 2))  # side by side, so the error bars stay readable
                ax.errorbar([e["n_steps"] * dodge for e in entries], [scale * e[key] for e in entries],
                            yerr=[scale * e[key + "_ci"] for e in entries], capsize=3, label=label,
                            fmt="o" + ("--" if label.endswith("n_steps") else "-"), color=colours[label])
            ax.set_xscale("log", base=2)
            ax.set_xticks(steps, [str(n) for n in steps])
            ax.minorticks_off()
            ax.set_title(method, fontsize=10)
            ax.set_xlabel("n_steps (state layers per block)")
            if key == "train_loss":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel(ylabel)
        fig.suptitle("mean and 95 % interval over the seeds", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written


CURVE_PANELS = (("loss_curve", "epoch", "training loss"), ("loss_curve", "seconds", "training loss"),
                ("test_accuracy_curve", "epoch", "test accuracy (%)"),
                ("test_accuracy_curve", "seconds", "test accuracy (%)"))


def _x_of(entry: dict, key: str, axis: str) -> list[float]:
    epochs = entry["test_epochs"] if key == "test_accuracy_curve" else range(1, len(entry["loss_curve"]) + 1)
    return list(epochs) if axis == "epoch" else [entry["seconds_curve"][e - 1] for e in epochs]


def _curve_panel(ax, entry: dict, key: str, axis: str, **style):
    scale = 100.0 if key == "test_accuracy_curve" else 1.0
    return _band(ax, _x_of(entry, key, axis), entry[key], entry[key + "_ci"], scale, **style)


def _plot_convergence(plt, summary, controls, steps, out: Path) -> list[Path]:
    written = []
    colours = {n: plt.cm.viridis(i / max(1, len(steps) - 1)) for i, n in enumerate(steps)}
    for method in dict.fromkeys(e["method"] for e in summary):
        lines = {label.removeprefix(f"{method}, "): entries for label, entries in series(summary, controls).items()
                 if all(e["method"] == method for e in entries)}
        if not lines:
            continue
        fig, axes = plt.subplots(len(CURVE_PANELS), len(lines), figsize=(3.6 * len(lines), 2.7 * len(CURVE_PANELS)),
                                 squeeze=False, sharey="row")
        for col, (label, entries) in enumerate(lines.items()):
            for row, (key, axis, ylabel) in enumerate(CURVE_PANELS):
                ax = axes[row][col]
                for e in entries:
                    _curve_panel(ax, e, key, axis, color=colours[e["n_steps"]], marker=".", markersize=3,
                                 label=f"n_steps = {e['n_steps']}")
                if key == "loss_curve":
                    ax.set_yscale("log")
                ax.set_xlabel("epoch" if axis == "epoch" else CLOCK_LABELS[entries[0]["clock"]])
                ax.grid(alpha=0.3)
                if col == 0:
                    ax.set_ylabel(ylabel)
                if row == 0:
                    ax.set_title(label, fontsize=10)
                    ax.legend(fontsize=7)
        fig.suptitle(f"{method}: mean and 95 % interval over the seeds", fontsize=10)
        fig.tight_layout()
        path = out / f"convergence_{method}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _plot_multilevel(plt, summary, out: Path) -> list[Path]:
    pairs = multilevel_pairs(summary)
    if not pairs:
        return []
    panels = (("loss_curve", "seconds", "training loss"), ("test_accuracy_curve", "seconds", "test accuracy (%)"),
              ("loss_curve", "epoch", "training loss"))
    fig, axes = plt.subplots(len(panels), len(pairs), figsize=(3.6 * len(pairs), 2.8 * len(panels)), squeeze=False,
                             sharey="row")
    for col, (ml, fixed) in enumerate(pairs):
        for row, (key, axis, ylabel) in enumerate(panels):
            ax = axes[row][col]
            _curve_panel(ax, fixed, key, axis, color="C0", marker=".", markersize=3,
                         label=f"fixed n_steps = {fixed['n_steps']}")
            _curve_panel(ax, ml, key, axis, color="C3", marker=".", markersize=3,
                         label="multilevel " + "→".join(str(n) for n in dict.fromkeys(ml["steps_curve"])))
            for epoch in ml["refine_at"] or []:  # where the multilevel run refined
                ax.axvline(epoch + 0.5 if axis == "epoch" else ml["seconds_curve"][epoch - 1], color="C3",
                           alpha=0.3, linestyle=":")
            if key == "loss_curve":
                ax.set_yscale("log")
            ax.set_xlabel("epoch" if axis == "epoch" else CLOCK_LABELS[ml["clock"]])
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(f"{ml['method']}, n_steps = {ml['n_steps']}, n_controls = {ml['n_controls']}",
                             fontsize=9)
                ax.legend(fontsize=7)
    fig.suptitle("multilevel training against the fine grid from the start (mean, 95 % interval)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "multilevel.png", dpi=90)
    plt.close(fig)
    return [out / "multilevel.png"]


def plot(summary: list[dict], controls, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({e["n_steps"] for e in summary})
    return (_plot_final(plt, summary, controls, steps, out) + _plot_convergence(plt, summary, controls, steps, out)
            + _plot_multilevel(plt, summary, out))


def report(payload: dict, out: Path) -> list[Path]:
    """Write results.md and the plots from a sweep's payload (what results.json holds); returns the files."""
    base = argparse.Namespace(**payload["config"])
    summary = summarize(payload["rows"], payload["clock"])
    table = markdown_table(summary, base, payload["seeds"]) + "\n" + paired_table(paired_differences(payload["rows"]))
    (out / "results.md").write_text(table)
    print(table)
    return [out / "results.md"] + plot(summary, payload["controls"], out)


def main(argv=None) -> dict:
    args, base = parse_args(argv)
    out = Path(args.out)
    if args.replot:
        payload = json.loads((out / "results.json").read_text())
        payload["clock"] = args.clock or payload.get("clock", "wall")
        files = report(payload, out)
        print(f"redrew {', '.join(p.name for p in files)} from {out / 'results.json'}")
        return payload
    out.mkdir(parents=True, exist_ok=True)
    cells = grid(args.steps, args.controls, args.methods, base.interp)
    ml_cells = multilevel_cells(cells, args.multilevel)
    jobs = jobs_of(cells, ml_cells, args.multilevel, args.seeds)
    data = train.load_data(base)
    print(f"contres.sweep: {len(cells)} cells + {len(ml_cells)} multilevel x {args.seeds} seeds, {base.epochs} "
          f"epochs each, {args.jobs} at a time -> {out}")
    start = time.perf_counter()
    rows = run_jobs(base, jobs, data, args.jobs)
    payload = {"config": {k: v for k, v in vars(base).items() if k not in ("json", "progress")},
               "seeds": args.seeds, "controls": args.controls, "multilevel": args.multilevel, "jobs": args.jobs,
               "clock": args.clock or "wall", "seconds": time.perf_counter() - start, "rows": rows}
    payload["summary"] = summarize(rows, payload["clock"])
    payload["paired"] = paired_differences(rows)
    train.write_json(out / "results.json", payload)
    files = report(payload, out)
    print(f"{len(rows)} runs in {payload['seconds']:.0f} s; wrote {out / 'results.json'}, "
          + ", ".join(p.name for p in files))
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
