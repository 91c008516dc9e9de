"""Rows out: the aligned text table, and the JSON file ({"environment": ..., "rows": [...]}) in both directions."""
from __future__ import annotations

import json
import math

MIB = 1024 ** 2

COLUMNS = (  # header, key, format
    ("device", "device", "{}"), ("case", "case", "{}"), ("method", "method", "{}"), ("path", "path", "{}"),
    ("fwd ms", "fwd_ms", "{:.2f}"), ("fwd+bwd ms", "fwd_bwd_ms", "{:.2f}"),
    ("x fwd", "speedup_fwd", "{:.2f}"), ("x fwd+bwd", "speedup_fwd_bwd", "{:.2f}"),
    ("act MiB", "act_mem_mib", "{:.1f}"), ("mem ratio", "mem_ratio", "{:.2f}"),
    ("rel diff out", "max_rel_diff_out", "{:.1e}"), ("L2 diff dW", "l2_rel_diff_grad_w", "{:.1e}"),
    ("max diff dW", "max_rel_diff_grad_w", "{:.1e}"),
)
N_TEXT = 4  # the text columns (left-aligned); numbers are right-aligned

LEGEND = ("x = speed-up over eager (eager time / method time); act MiB = what the forward saves for the backward "
          "(saved-tensor hooks,\neach storage once, the inputs excluded) plus the output; mem ratio = act / eager act; "
          "rel diff out = max |method - eager| / max |eager|;\nL2 diff dW = ||method - eager|| / ||eager|| of "
          "the first kernel's gradient (max diff dW: its max-abs difference / max |eager|, which a single relu kink "
          "taking the other\nbranch moves to ~1e-2 in float32); path = the implementation that ran (contres.ops.last_paths() "
          "for fused rows, '-' where this build does not report it).")


def path_label(path) -> str:
    """One cell for a row's path {"forward": ..., "backward": ...}: one name when both are the same."""
    if not path:
        return "-"
    fwd, bwd = path.get("forward"), path.get("backward")
    return str(fwd) if fwd == bwd else f"{fwd}/{bwd}"


def _cell(row: dict, key: str, fmt: str) -> str:
    if key == "path":
        return path_label(row.get("path"))
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def format_table(rows: list) -> str:
    """An aligned text table, a blank line between cases, notes listed below."""
    header = [h for h, _, _ in COLUMNS]
    cells = [[_cell(r, key, fmt) for _, key, fmt in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells + [header]) for i in range(len(header))]

    def line(values):
        return "  ".join(v.ljust(w) if i < N_TEXT else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    prev_case = None
    for r, c in zip(rows, cells):
        if prev_case is not None and (r["device"], r["case"]) != prev_case:
            out.append("")
        prev_case = (r["device"], r["case"])
        out.append(line(c).rstrip())
    notes = [f"  {r['device']} {r['case']} {r['method']}: {r['note']}" for r in rows if r["note"]]
    if notes:
        out += ["", "notes:"] + notes
    return "\n".join(out)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, rows: list, env: dict) -> None:
    with open(path, "w") as f:
        json.dump(_json_safe({"environment": env, "rows": rows}), f, indent=2)


def read_json(path: str) -> tuple:
    """(rows, environment) of a saved run; rows of older runs lack the newer keys (read them with .get)."""
    with open(path) as f:
        data = json.load(f)
    return data["rows"], data.get("environment", {})
