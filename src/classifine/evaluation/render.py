"""Turn a report's numbers (metrics.json) into tables, plots and documents.

Tables are built once as plain data (``sections``) and rendered by Jinja2 templates into Markdown
and into a self-contained HTML page (inline CSS, plots as data: URIs: it must open offline, e.g.
from an e-mail attachment). The headline numbers per kind come from ``scoring.kinds.key_metrics``,
the one list that the report, ``compare`` and the model card all show, so they cannot drift apart.
"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np

from ..scoring.kinds import HEADLINE, METRICS, key_metrics

TEMPLATES = Path(__file__).parent / "templates"
# a cell that right-aligns: 12, 0.4269, 80.00%, 80.00% (96/120), +3.25 pp, –
_NUMBER = re.compile(r"^(?:[+\-−]?\d[\d.,]*(?:%| pp)?(?: \(\d+/\d+\))?|–)$")


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def cell(value: float | None, num: int | None = None, den: int | None = None) -> str:
    """``70.92% (856/1207)``: a rate is never shown without what it counts."""
    return pct(value) + (f" ({num}/{den})" if den is not None else "")


def fmt(row: dict) -> str:
    return cell(row["value"], row["num"], row["den"]) if row["unit"] == "pct" else f"{row['value']:.4f}"


def _answer(x) -> str:
    if isinstance(x, list):
        names = [e if isinstance(e, str) else f"{e.get('name', e.get('text'))} ({e.get('confidence', 1.0):.2f})"
                 if isinstance(e, dict) else str(e) for e in x]
        return ", ".join(names) if names else "(none)"
    return str(x)


def baseline_warning(kind: str, m: dict) -> str | None:
    """One sentence when the model does not beat its trivial baseline on the headline rate."""
    b = m.get("baseline")
    if not b or b.get("beaten", True):
        return None
    head = HEADLINE[kind]
    return (f"The model does not beat its trivial baseline: {METRICS[head].name} {pct(m[head])} against "
            f"{pct(b['metrics'][head])} for {b['describe']}.")


def baseline_table(kind: str, m: dict) -> dict:
    """The model beside the answer that ignores the text, metric by metric, with the difference."""
    b = m["baseline"]
    rows = []
    for key, base in b["metrics"].items():
        fact, value = METRICS[key], m.get(key)
        if value is None:
            continue
        if fact.unit == "pct":
            rows.append([fact.name, pct(value), pct(base), f"{100 * (value - base):+.2f} pp"])
        else:
            rows.append([fact.name, f"{value:.4f}", f"{base:.4f}", f"{value - base:+.4f}"])
    note = f"trivial baseline: {b['describe']}, scored on the same rows"
    warning = baseline_warning(kind, m)
    return {"title": "Trivial baseline", "headers": ["metric", "model", "baseline", "Δ"], "rows": rows,
            "note": f"{warning} ({note})" if warning else note}


def truncation_table(t: dict) -> dict:
    """Rows longer than the text budget, per data set, and how much of them the model still saw."""
    rows = [[name, str(c["rows"]), cell(c["truncated_share"], c["truncated_rows"], c["rows"]), pct(c["tokens_kept_share"])]
            for name, c in (("training data", t.get("train")), ("evaluation data", t.get("evaluation"))) if c]
    return {"title": "Truncation", "headers": ["data", "rows", "truncated rows", "tokens kept (truncated rows)"],
            "rows": rows, "note": f"max_length {t['evaluation']['max_length']} tokens; longer inputs are cut, the "
                                  "instruction and answer never"}


def slice_table(kind: str, values: dict) -> dict:
    head = HEADLINE[kind]
    extra = [k for k in next(iter(values.values()), {}) if k not in ("n", "correct", head)]
    rows = [[value, str(s["n"]), cell(s[head], s["correct"], s["n"]),
             *[f"{s[k]:.3f}" if METRICS[k].unit == "num" else pct(s[k]) for k in extra]] for value, s in values.items()]
    return {"headers": ["value", "n", METRICS[head].header, *[METRICS[k].header for k in extra]], "rows": rows}


def subset_table(subsets: dict) -> dict:
    rows = []
    for name, s in subsets.items():
        if "labels" in s:
            rows.append([name, "reference in " + ", ".join(s["labels"]), str(s["n"]), cell(s["recall"], s["found"], s["relevant"]),
                         cell(s["precision"], s["found"], s["predicted"]), cell(s["accuracy"], s["correct"], s["n"])])
        else:
            rows.append([name, f"{s['column']} in " + ", ".join(s["values"]), str(s["n"]), "–", "–",
                         cell(s["rate"], s["correct"], s["n"]) + f" ({METRICS[s['metric']].name})"])
    return {"headers": ["subset", "rows", "n", "recall", "precision", "exact answers"], "rows": rows}


def combined_note(c: dict) -> str:
    """What a combined table's cells count (report and compare say it the same way)."""
    rates = ", ".join(f"{name}: {METRICS[metric].name}" for name, metric in c["metrics"].items())
    return f"each task-level example counts once, with its task's rate ({rates})"


def combined_sections(c: dict) -> list[dict]:
    """The multi-task tables (evaluation/multitask.py ``combine``): every task-level example once,
    by task and by slice; then each subset per task and slice."""
    out = [{"title": "All tasks", "headers": ["", "rate (correct/rows)"], "note": combined_note(c),
            "rows": [[line["label"], cell(line["rate"], line["num"], line["den"])] for line in c["table"]]}]
    for name, lines in c["subsets"].items():
        out.append({"title": f"Subset {name}", "headers": ["task", "rows", "metric", "rate"],
                    "rows": [[line["task"], line["label"], line["metric"], cell(line["rate"], line["num"], line["den"])]
                             for line in lines]})
    return out


def sections(task, m: dict, images: dict[str, bytes] | None = None) -> list[dict]:
    """The report as a list of titled tables (and images), shared by the Markdown and HTML templates."""
    images = images or {}
    out = [{"title": "Overall", "headers": ["metric", "value"],
            "rows": [[r["name"], fmt(r)] for r in key_metrics(task.kind, m)]}]
    if m.get("baseline"):
        out.append(baseline_table(task.kind, m))
    for col, values in m.get("slices", {}).items():
        if values:
            note = "macro F1 over the labels that occur in each slice" if task.kind != "extraction" else None
            out.append({"title": f"By {col}", **slice_table(task.kind, values), "note": note})
    if m.get("subsets"):
        out.append({"title": "Subsets", **subset_table(m["subsets"]),
                    "note": "recall: rows whose reference is in the subset and that were predicted inside it"})
    if m.get("combined"):
        out = combined_sections(m["combined"]) + out
    if m.get("truncation"):
        out.append(truncation_table(m["truncation"]))
    if m.get("per_class"):
        out.append({"title": "Per class", "headers": ["label", "precision", "recall", "F1", "support"],
                    "rows": [[lab, pct(r["precision"]), pct(r["recall"]), pct(r["f1"]), str(r["support"])]
                             for lab, r in m["per_class"].items()]})
    if "confusion_matrix" in m:
        cm = m["confusion_matrix"]
        out.append({"title": "Confusion matrix", "note": "rows: reference, columns: predicted",
                    "image": "confusion", "headers": ["", *cm["labels"]],
                    "rows": [[lab, *map(str, row)] for lab, row in zip(cm["labels"], cm["matrix"])]})
    if m.get("confused_pairs"):
        out.append({"title": "Most confused pairs", "headers": ["reference", "predicted", "rows"],
                    "rows": [[p["gold"], p["pred"], str(p["count"])] for p in m["confused_pairs"]]})
    if m.get("mistakes"):
        out.append({"title": "Most confident mistakes", "headers": ["row", "text", "reference", "predicted", "probability"],
                    "note": f"{len(m['mistakes'])} of {m.get('mistakes_total', len(m['mistakes']))} mistakes",
                    "rows": [[str(x["row"]), x["text"], _answer(x["gold"]), _answer(x["pred"]),
                              "–" if x["confidence"] is None else f"{x['confidence']:.3f}"] for x in m["mistakes"]]})
    if "calibration" in m:
        c = m["calibration"]
        out.append({"title": "Calibration", "image": "reliability",
                    "note": f"expected calibration error {c['ece']:.4f} over {c['bins']} equal-width confidence bins",
                    "headers": ["confidence bin", "rows", "mean confidence", "accuracy"],
                    "rows": [[f"{b['lower']:.1f}–{b['upper']:.1f}", str(b["n"]), f"{b['confidence']:.3f}",
                              f"{b['accuracy']:.3f}"] for b in c["curve"]]})
    for s in out:
        s["numeric"] = [bool(s["rows"]) and all(_NUMBER.match(r[j]) for r in s["rows"]) for j in range(len(s["headers"]))]
        s.setdefault("note", None)
        if s.get("image") not in images:
            s["image"] = None
    return out


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             autoescape=jinja2.select_autoescape(["html", "html.j2"]), trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["md"] = lambda s: str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    env.filters["pct"] = pct
    return env


def render_template(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def render_markdown(task, m: dict, images: dict[str, bytes]) -> str:
    return render_template("report.md.j2", task=task, m=m, sections=sections(task, m, images),
                           warning=baseline_warning(task.kind, m))


def render_html(task, m: dict, images: dict[str, bytes]) -> str:
    uris = {k: "data:image/png;base64," + base64.b64encode(v).decode("ascii") for k, v in images.items()}
    return render_template("report.html.j2", task=task, m=m, sections=sections(task, m, images), images=uris,
                           warning=baseline_warning(task.kind, m))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


CJK_FONTS = ("NanumGothic", "Noto Sans CJK KR", "Noto Sans KR", "Malgun Gothic", "AppleGothic", "Noto Sans CJK JP")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    # Korean label names would be empty boxes in DejaVu Sans; matplotlib falls back glyph by glyph
    # through this list, using whichever of these fonts the machine has
    installed = {f.name for f in font_manager.fontManager.ttflist}
    if not installed & set(CJK_FONTS):  # matplotlib's font cache predates a font installed later
        for path in font_manager.findSystemFonts():
            if re.search(r"nanum|notosanscjk|notosanskr", Path(path).name, re.I):
                font_manager.fontManager.addfont(path)
        installed = {f.name for f in font_manager.fontManager.ttflist}
    plt.rcParams["font.family"] = ["DejaVu Sans"] + [f for f in CJK_FONTS if f in installed]
    return plt


def confusion_png(cm: dict) -> bytes:
    plt = _pyplot()
    labels, m = cm["labels"], np.array(cm["matrix"])
    size = max(4.0, 0.7 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    # row-normalised colours: a rare class's mistakes stay visible next to a frequent class
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    if len(labels) <= 30:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    return _png(fig)


def reliability_png(calibration: dict) -> bytes:
    plt = _pyplot()
    curve = calibration["curve"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    width = 1.0 / calibration["bins"]
    ax.bar([c["lower"] for c in curve], [c["accuracy"] for c in curve], width=width, align="edge",
           color="#4c78a8", edgecolor="white", label="accuracy")
    ax.plot([c["confidence"] for c in curve], [c["accuracy"] for c in curve], "o", color="#f58518", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE {calibration['ece']:.4f}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _png(fig)
