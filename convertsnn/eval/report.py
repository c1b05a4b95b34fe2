"""Tables for the terminal and Markdown, and JSON result files."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from convertsnn.eval.robustness import EvalRow
from convertsnn.snn.serialize import atomic_write


def rows_table(rows: Sequence[EvalRow], attack: str = "", markdown: bool = False) -> str:
    """A table with one line per row: model, clean accuracy, robust accuracy per eps (in %)."""
    eps_keys = sorted({k for r in rows for k in r.robust}, key=float)
    header = ["model", "clean %"] + [f"{attack} eps={k} %".strip() for k in eps_keys]
    lines = [
        [r.model, f"{100 * r.clean:.2f}"]
        + [f"{100 * r.robust[k]:.2f}" if k in r.robust else "-" for k in eps_keys]
        for r in rows
    ]
    return format_table(header, lines, markdown)


def format_table(
    header: Sequence[str], lines: Sequence[Sequence[str]], markdown: bool = False
) -> str:
    """Align columns; with ``markdown=True`` emit a pipe table."""
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt.format(*header), rule] + [fmt.format(*line) for line in lines])


def write_json(path: str | os.PathLike, result: dict) -> Path:
    """Write ``result`` as indented JSON, atomically."""
    path = Path(path)
    text = json.dumps(
        result,
        indent=2,
        default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o),
    )
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def runs_table(summary: dict, markdown: bool = False, per_run: bool = True) -> str:
    """The runs of one suite result (a ``SuiteResult.summary()``), in order.

    ``per_run=False`` sums runs of the same attack (a short form for the terminal).
    """
    header = ["run", "attacked", "broke", "robust after %", "seconds", "breaks/s", "passes",
              "zero grads %"]  # fmt: skip
    groups: dict[str, dict] = {}
    for r in summary["runs"]:
        key = r["label"] if per_run else r["attack"] + (" (black-box)" if r["blackbox"] else "")
        key += f" ({r['note']})" if r.get("note") else ""
        g = groups.setdefault(key, {"attacked": 0, "lowered": 0, "seconds": 0.0, "samples": 0,
                                    "zero": 0, "robust_after": 0.0, "runs": 0, "passes": 0})  # fmt: skip
        g["runs"] += 1
        for k in ("attacked", "lowered", "seconds"):
            g[k] += r[k]
        g["passes"] += r.get("forward", 0) + r.get("backward", 0)
        g["samples"] += r["gradients"].get("samples", 0)
        g["zero"] += r["gradients"].get("zero", 0)
        g["robust_after"] = r["robust_after"]
    lines = [
        [name if per_run else f"{name} x{g['runs']}", str(g["attacked"]), str(g["lowered"]),
         f"{100 * g['robust_after']:.2f}", f"{g['seconds']:.1f}",
         f"{g['lowered'] / g['seconds']:.2f}" if g["seconds"] > 0 else "-", str(g["passes"]),
         f"{100 * g['zero'] / g['samples']:.1f}" if g["samples"] else "-"]
        for name, g in groups.items()
    ]  # fmt: skip
    return format_table(header, lines, markdown)


def cost_text(summary: dict) -> str:
    """The suite's cost in a line: its ratio to one PGD-20 run on the same images, the
    image-passes behind it (docs/evaluation.md) and the wall time."""
    cost = summary.get("cost")
    if not cost:
        return f"{summary['seconds']:.0f} s"
    return (f"{cost['pgd20_ratio']:.1f}x one PGD-20 run on these images ({cost['forward']} "
            f"forward + {cost['backward']} backward image-passes, probe included), "
            f"{summary['seconds']:.0f} s")  # fmt: skip


def flags_text(flags: Sequence[dict], markdown: bool = False) -> str:
    """One line per sanity check: ``FLAG`` (raised) or ``ok``, the check and what it saw."""
    bullet = "- " if markdown else ""
    return "\n".join(
        f"{bullet}{'**FLAG**' if f['raised'] and markdown else 'FLAG' if f['raised'] else 'ok'}"
        f"  {f['check']}: {f['message']}"
        for f in flags
    )


def markdown_report(document: dict, images: Sequence[str] = ()) -> str:
    """A Markdown report of a ``convertsnn evaluate`` JSON document (tables, runs, flags)."""
    rows = [EvalRow(**{k: r[k] for k in ("model", "timesteps", "clean", "robust")})
            for r in document["rows"]]  # fmt: skip
    suite = document.get("suite") or {"name": "", "description": "clean accuracy only"}
    out = [
        f"# Robustness of {document['model']}",
        "",
        f"- command: `{document.get('command', '')}`",
        f"- data: {document['data']} ({document['images']} images)",
        f"- evaluation: {suite['name'] or 'none'} ({suite['description']}), "
        f"norm {document['norm']}, EOT draws {document['eot']}, seed {document['seed']}",
        "",
        rows_table(rows, suite["name"], markdown=True),
        "",
    ]
    out += [f"![{Path(name).stem}]({name})" for name in images]
    for row in document["rows"]:
        for key, detail in row.get("details", {}).items():
            out += ["", f"## {row['model']}, eps={float(key):.4g}", ""]
            out.append(f"Robust accuracy {100 * detail['robust']:.2f}% "
                       f"(clean {100 * detail['clean']:.2f}%); cost {cost_text(detail)}.")  # fmt: skip
            if "autoattack" in detail:
                aa = detail["autoattack"]
                out.append(f"AutoAttack ({aa['version']}, gradient mode {aa['mode']}): "
                           f"{100 * aa['robust']:.2f}% ({aa['seconds']:.0f} s).")  # fmt: skip
            if detail.get("probe"):
                ranked = ", ".join(f"{p['mode']} ({p['broken']:g})" for p in detail["probe"])
                out += ["", f"Gradient modes ranked by the probe (samples broken): {ranked}."]
            out += ["", runs_table(detail, markdown=True), "", "Sanity checks:", ""]
            out.append(flags_text(detail["flags"], markdown=True))
    return "\n".join(out) + "\n"
