"""The human-readable side of an audit: PNG pictures, report.md and report.html."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..data.manifest import Dataset
from ..data.selection import Selection
from ..viz import grid_image, save_comparison

if TYPE_CHECKING:
    from .run import ModelMeasurements

GRID_PER_CLASS = 8
ROLE_TITLES = {"base": "base model", "unlearned": "unlearned model", "retrain": "retrained (reference)"}


def _save(fig: plt.Figure, stage: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(stage / name, dpi=110)
    plt.close(fig)
    return name


def _membership(meas: dict[str, ModelMeasurements]) -> dict:
    return {role: mm.membership for role, mm in meas.items() if mm.membership is not None}


def _sample_grids(stage: Path, meas: dict[str, ModelMeasurements], dataset: Dataset) -> str | None:
    panels = {}
    for role, mm in meas.items():
        if mm.class_samples is not None:
            cs = mm.class_samples
            idx = [
                i * cs.per_class + j for i in range(len(cs.classes)) for j in range(min(GRID_PER_CLASS, cs.per_class))
            ]
            names = dataset.info.get("class_names") or [str(c) for c in cs.classes]
            panels[ROLE_TITLES[role]] = grid_image(
                cs.images[idx], nrow=min(GRID_PER_CLASS, cs.per_class), row_labels=[names[c] for c in cs.classes]
            )
        elif mm.uncond_samples is not None:
            panels[ROLE_TITLES[role]] = grid_image(mm.uncond_samples[:100], nrow=10)
    if not panels:
        return None
    save_comparison(panels, stage / "samples.png", title="samples per class (rows), same seeds for every model")
    return "samples.png"


def _class_accuracy(stage: Path, meas: dict[str, ModelMeasurements], selection: Selection) -> str | None:
    accs = {role: mm.figures.get("class_accuracy") for role, mm in meas.items() if mm.figures.get("class_accuracy")}
    if not accs:
        return None
    classes = sorted(next(iter(accs.values())).keys())
    width = 0.8 / len(accs)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (role, acc) in enumerate(accs.items()):
        ax.bar(np.arange(len(classes)) + i * width, [acc[c] for c in classes], width, label=ROLE_TITLES[role])
    ax.set_xticks(np.arange(len(classes)) + width * (len(accs) - 1) / 2, [str(c) for c in classes])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("class asked for")
    ax.set_ylabel("evaluator accuracy")
    for c in selection.forget_labels:
        if c in classes:
            ax.axvspan(classes.index(c) - 0.2, classes.index(c) + 0.8, color="red", alpha=0.08)
    ax.legend(fontsize=8)
    ax.set_title("is each class still drawn? (forget-set classes shaded)")
    return _save(fig, stage, "class_accuracy.png")


def _roc(stage: Path, meas: dict[str, ModelMeasurements]) -> str | None:
    curves = _membership(meas)
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for role, mr in curves.items():
        ax.plot(mr.fpr, mr.tpr, label=f"{ROLE_TITLES[role]} (AUC {mr.auc:.2f})", drawstyle="steps-post")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("false positive rate (hold-out records)")
    ax.set_ylabel("true positive rate (forget records)")
    ax.set_title("membership attack (denoising error)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, stage, "mia_roc.png")


def _histograms(stage: Path, meas: dict[str, ModelMeasurements]) -> str | None:
    curves = _membership(meas)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    all_vals = np.concatenate([np.r_[m.member_errors, m.nonmember_errors] for m in curves.values()])
    bins = np.logspace(np.log10(max(all_vals.min(), 1e-4)), np.log10(all_vals.max() + 1e-9), 25)
    for ax, (role, mr) in zip(axes[0], curves.items(), strict=True):
        ax.hist(mr.nonmember_errors, bins=bins, alpha=0.6, label="hold-out (never trained)")
        ax.hist(mr.member_errors, bins=bins, alpha=0.8, label="forget records")
        ax.set_xscale("log")
        ax.set_title(ROLE_TITLES[role], fontsize=10)
        ax.set_xlabel("denoising error")
    axes[0][0].legend(fontsize=8)
    return _save(fig, stage, "loss_histograms.png")


def _extraction_pairs(
    stage: Path, meas: dict[str, ModelMeasurements], dataset: Dataset, worst: int = 6, redact: bool = False
) -> str | None:
    u = meas["unlearned"].extraction
    if u is None:
        return None
    order = np.argsort(u.ratios)[:worst]
    roles = [r for r in meas if meas[r].extraction is not None]
    forget_imgs = {rid: img for rid, img in zip(u.record_ids, _record_images(dataset, u.record_ids), strict=True)}
    fig, axes = plt.subplots(
        len(order), 1 + len(roles), figsize=(1.6 * (1 + len(roles)), 1.7 * len(order)), squeeze=False
    )
    for row, i in enumerate(order):
        rid = u.record_ids[i]
        if redact:
            axes[row][0].imshow(np.full_like(forget_imgs[rid][0], 128), cmap="gray", vmin=0, vmax=255)
            axes[row][0].set_title(f"{rid[:18]} (redacted)", fontsize=7)
        else:
            axes[row][0].imshow(forget_imgs[rid][0], cmap="gray", vmin=0, vmax=255)
            axes[row][0].set_title(rid[:18], fontsize=7)
        for col, role in enumerate(roles, start=1):
            ex = meas[role].extraction
            axes[row][col].imshow(ex.nearest[i][0].numpy(), cmap="gray", vmin=0, vmax=255)
            tag = "EXTRACTED" if ex.ratios[i] < 1 else "ok"
            axes[row][col].set_title(f"{role}: {ex.ratios[i]:.2f} {tag}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("forget record | nearest generated sample (ratio < 1: extracted)", fontsize=8)
    return _save(fig, stage, "extraction_pairs.png")


def _record_images(dataset: Dataset, record_ids: list[str]) -> np.ndarray:
    by_id = {r.record_id: r for r in dataset.records}
    return dataset.load_images([by_id[r] for r in record_ids])


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _rows(record: dict) -> list[list[str]]:
    rows = []
    for name, m in record["metrics"].items():
        th = m.get("threshold")
        if th is None:
            rule = ""
        elif th["op"] == "within":
            rule = f"|x - {th['center']}| <= {th['value']:.3g}"
        else:
            rule = f"{th['op']} {th['value']:.3g}"
        status = "" if m["passed"] is None else ("PASS" if m["passed"] else "FAIL")
        rows.append([name, m["group"], _fmt(m["value"]), _fmt(m["base"]), _fmt(m["retrain"]), rule, status])
    return rows


HEADER = ["metric", "group", "unlearned", "base", "retrain", "gate", "result"]


def write_report(
    stage: Path, record: dict, meas: dict[str, ModelMeasurements], selection: Selection, dataset: Dataset
) -> dict[str, str]:
    pictures = {}
    for key, fn in (
        ("samples", lambda: _sample_grids(stage, meas, dataset)),
        ("class_accuracy", lambda: _class_accuracy(stage, meas, selection)),
        ("mia_roc", lambda: _roc(stage, meas)),
        ("loss_histograms", lambda: _histograms(stage, meas)),
        (
            "extraction_pairs",
            lambda: _extraction_pairs(stage, meas, dataset, redact=record["params"]["redact_forget_images"]),
        ),
    ):
        name = fn()
        if name:
            pictures[key] = name
    sel = record["selection"]
    title = f"Unlearning audit: {record['verdict'].upper()}"
    lines = [
        f"# {title}",
        "",
        f"- scope: **{sel['scope']}**; targets: `{sel['targets']}`",
        f"- forget set: {sel['forget']} records ({sel['forget_distinct_images']} distinct images), "
        f"sha256 `{sel['forget_set_sha256'][:16]}…`; retained: {sel['retain']} records",
        f"- dataset: `{record['dataset']['path']}` (digest `{record['dataset']['digest'][:16]}…`)",
    ]
    for role, info in record["models"].items():
        lines.append(f"- {ROLE_TITLES[role]}: `{info['path']}` (UNet sha256 `{info['unet_sha256'][:16]}…`)")
    lines.append(
        f"- evaluator hold-out accuracy {record['evaluator']['holdout_accuracy']:.3f}; "
        f"features: {record['evaluator']['features']}; seed {record['params']['seed']}"
    )
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(record)]
    lines.append("")
    for key, name in pictures.items():
        lines += [f"## {key.replace('_', ' ')}", "", f"![{key}]({name})", ""]
    (stage / "report.md").write_text("\n".join(lines))

    cells = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td class='{html.escape(c)}'>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in _rows(record)
    )
    items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines[2:] if line.startswith("- "))
    imgs = "".join(
        f"<h2>{html.escape(k.replace('_', ' '))}</h2><img src='{html.escape(n)}' alt='{html.escape(k)}'>"
        for k, n in pictures.items()
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}td.PASS{color:#070;font-weight:bold}"
        "td.FAIL{color:#b00;font-weight:bold}img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><ul>{items}</ul><table><tr>{cells}</tr>{body}</table>{imgs}</body></html>\n"
    )
    (stage / "report.html").write_text(page)
    # A single-file variant for viewers that show one HTML artifact (the KFP UI, object stores).
    inline = page
    for name in pictures.values():
        data = base64.b64encode((stage / name).read_bytes()).decode()
        inline = inline.replace(f"src='{html.escape(name)}'", f"src='data:image/png;base64,{data}'")
    (stage / "report_inline.html").write_text(inline)
    return pictures
