"""The human-readable side of an audit: PNG pictures, report.md and report.html.

Reports are kept for years, long after the records they audit were erased, so they must not
carry the data: no picture shows a forget image, nor a generated sample that is a copy of one.
Extraction is reported as numbers (distances against the threshold), and in sample grids every
generated sample within the extraction threshold of a forget image, or of a model's nearest
sample to one, is withheld and drawn as a marked grey tile (:class:`ForgetGuard`).
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data.manifest import Dataset
from ..data.selection import Selection
from ..data.tensors import TensorSet, to_uint8
from ..viz import compose_panels, grid_image
from .gates import gate_status, threshold_text
from .memorization import _flat01

if TYPE_CHECKING:
    from .run import ModelMeasurements

GRID_PER_CLASS = 8
ROLE_TITLES = {
    "base": "base model",
    "unlearned": "unlearned model",
    "retrain": "retrained (reference)",
    "original": "original model (first of the lineage; utility only, no samples shown)",
}
REDACTION_NOTE = (
    "grey tiles crossed in red: samples withheld, they lie within the extraction threshold of a "
    "forget record (or of a model's nearest sample to one)"
)


@dataclass
class ForgetGuard:
    """What a report must never show, and how close counts as showing it.

    ``references`` are the distinct forget images and each model's nearest generated sample to
    each of them (near-copies when a model memorized the record, whether or not unlearning
    worked); ``thresholds`` the distance under which an image counts as a copy of a reference:
    the extraction test's, alpha times the record's mean distance to its k nearest other training
    images, in the memorization audit's metric (L2 over pixels in [0, 1]).
    """

    references: torch.Tensor  # [R, C, H, W] uint8
    thresholds: torch.Tensor  # [R] float
    forget_record_ids: list[str]
    forget_thresholds: list[float]  # aligned with forget_record_ids (the first references)

    @classmethod
    def build(
        cls,
        forget: TensorSet,
        neighbourhood: torch.Tensor,
        alpha: float,
        nearest: Sequence[torch.Tensor] = (),
    ) -> ForgetGuard:
        """``forget``: distinct forget images; ``nearest``: per model, ``[len(forget), C, H, W]`` uint8."""
        per_record = (alpha * neighbourhood.clamp(min=1e-12)).float()
        refs, ths = [forget.images], [per_record]
        for near in nearest:
            if near.shape[0] != len(forget):
                raise ValueError(f"{near.shape[0]} nearest samples for {len(forget)} forget images")
            refs.append(near)
            ths.append(per_record)
        return cls(
            references=torch.cat(refs),
            thresholds=torch.cat(ths),
            forget_record_ids=list(forget.record_ids),
            forget_thresholds=per_record.tolist(),
        )

    def near(self, images_u8: torch.Tensor) -> torch.Tensor:
        """Boolean ``[N]``: which of ``images_u8`` lie within the threshold of some reference."""
        if images_u8.dtype != torch.uint8:
            raise TypeError("ForgetGuard.near takes uint8 images, as they are drawn")
        if len(images_u8) == 0 or len(self.references) == 0:
            return torch.zeros(len(images_u8), dtype=torch.bool)
        d = torch.cdist(_flat01(images_u8), _flat01(self.references))
        # At or under the threshold: a sample exactly at it is withheld too.
        return (d <= self.thresholds.unsqueeze(0)).any(1)


def neighbourhood_chunked(forget: TensorSet, train: TensorSet, k: int, chunk: int = 256) -> torch.Tensor:
    """:func:`.memorization.neighbourhood_distance`, in chunks of forget images.

    Class erasures forget a whole class: all of it against all training images at once would
    be a matrix of billions of entries on larger data sets. Same values, bounded memory.
    """
    codes: dict[str, int] = {}
    train_codes = torch.tensor([codes.setdefault(s, len(codes)) for s in train.sha256])
    forget_codes = torch.tensor([codes.setdefault(s, len(codes)) for s in forget.sha256])
    copies = torch.bincount(train_codes, minlength=len(codes))
    k = min(k, int(len(train) - copies[forget_codes].max()))
    train_flat = _flat01(train.images)
    out = []
    for start in range(0, len(forget), chunk):
        fc = forget_codes[start : start + chunk]
        d = torch.cdist(_flat01(forget.images[start : start + chunk]), train_flat)
        d = torch.where(fc.unsqueeze(1) == train_codes.unsqueeze(0), torch.full_like(d, float("inf")), d)
        out.append(d.topk(k, largest=False).values.mean(1))
    return torch.cat(out) if out else torch.zeros(0)


def _save(fig: plt.Figure, stage: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(stage / name, dpi=110)
    plt.close(fig)
    return name


def _membership(meas: dict[str, ModelMeasurements]) -> dict:
    return {role: mm.membership for role, mm in meas.items() if mm.membership is not None}


def _sample_grids(
    stage: Path, meas: dict[str, ModelMeasurements], dataset: Dataset, guard: ForgetGuard
) -> tuple[str | None, dict[str, int]]:
    """samples.png, and per model how many of its shown samples were withheld."""
    panels, withheld = {}, {}
    for role, mm in meas.items():
        if mm.class_samples is not None:
            cs = mm.class_samples
            per_row = min(GRID_PER_CLASS, cs.per_class)
            idx = [i * cs.per_class + j for i in range(len(cs.classes)) for j in range(per_row)]
            names = dataset.info.get("class_names") or [str(c) for c in cs.classes]
            shown, labels = to_uint8(cs.images[idx]), [str(names[c]) for c in cs.classes]
        elif mm.uncond_samples is not None:
            per_row, shown, labels = 10, to_uint8(mm.uncond_samples[:100]), None
        else:
            continue
        # Judged on the very uint8 pixels that are drawn, as the extraction test judges samples.
        mask = guard.near(shown)
        withheld[role] = int(mask.sum())
        caption = f"{ROLE_TITLES[role]} ({withheld[role]} withheld)"
        panels[caption] = grid_image(shown, nrow=per_row, row_labels=labels, redacted=mask.tolist())
    if not panels:
        return None, withheld
    title = "samples per class (rows), same seeds for every model"
    compose_panels(panels, title=title, notes=[REDACTION_NOTE]).save(stage / "samples.png")
    return "samples.png", withheld


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


MARKERS = {"base": "o", "unlearned": "s", "retrain": "^"}


def _extraction_distances(stage: Path, meas: dict[str, ModelMeasurements], guard: ForgetGuard) -> str | None:
    """Per forget record, each model's distance to its nearest generated sample, against the threshold.

    The numbers the extraction gate decides on, in place of the images it compared: those are
    the deleted records and their copies.
    """
    u = meas["unlearned"].extraction
    if u is None:
        return None
    if u.record_ids != guard.forget_record_ids:
        raise ValueError("the extraction results and the report's guard list different forget records")
    threshold = np.asarray(guard.forget_thresholds)
    order = np.argsort(u.ratios, kind="stable")  # closest to being extracted first
    roles = [r for r in meas if meas[r].extraction is not None]
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 5.0 + 0.3 * len(order))), 4.0))
    ax.hlines(threshold[order], x - 0.42, x + 0.42, colors="black", linewidth=1.5, label="extraction threshold")
    width = 0.5 / max(1, len(roles))
    for j, role in enumerate(roles):
        ex = meas[role].extraction
        dist = np.asarray(ex.ratios)[order] * threshold[order]
        ax.scatter(
            x + (j - (len(roles) - 1) / 2) * width,
            dist,
            marker=MARKERS.get(role, "o"),
            s=22,
            label=f"{ROLE_TITLES[role]}: {ex.extracted} of {len(ex.ratios)} extracted",
        )
    ax.set_ylim(bottom=0)
    ax.set_xlim(-0.6, len(order) - 0.4)
    if len(order) <= 30:
        ax.set_xticks(x, [u.record_ids[i][:18] for i in order], rotation=60, ha="right", fontsize=6)
    else:
        ax.set_xticks([])
    ax.set_xlabel("forget records (distinct images), closest first")
    ax.set_ylabel("L2 distance to the nearest sample")
    ax.set_title(f"nearest of {u.samples} generated samples per forget record\n(under the bar: extracted)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, stage, "extraction_distances.png")


# The audit's per-record position among retrained models, one per membership statistic.
RETRAIN_POSITION = (("loss_within_retrain_range", "denoising error"), ("pia_within_retrain_range", "PIA distance"))


def _retrain_position(stage: Path, record: dict) -> str | None:
    """Per forget record, the retrained models' statistic (the band a retrained model falls in) and
    where the unlearned and the base model sit: below the band the record is still remembered."""
    panels = [(record["metrics"][name], title) for name, title in RETRAIN_POSITION if name in record["metrics"]]
    if not panels:
        return None
    n_records = len(panels[0][0]["details"]["errors"]["unlearned"])
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(min(14.0, max(7.0, 4.0 + 0.3 * n_records)), 3.2 * len(panels)), squeeze=False
    )
    for ax, (metric, title) in zip(axes[:, 0], panels, strict=True):
        errors = metric["details"]["errors"]
        retrained = np.asarray(errors["retrained"])
        order = np.argsort(np.median(retrained, axis=0), kind="stable")
        x = np.arange(len(order))
        lo, hi = retrained.min(0)[order], retrained.max(0)[order]
        ax.vlines(x, lo, hi, colors="0.75", linewidth=6, label=f"range of {retrained.shape[0]} retrained models")
        ax.scatter(np.repeat(x, retrained.shape[0]), retrained[:, order].T.ravel(), s=6, color="0.45")
        for role in ("base", "unlearned"):
            within = metric["value"] if role == "unlearned" else metric["base"]
            ax.scatter(
                x,
                np.asarray(errors[role])[order],
                marker=MARKERS[role],
                s=26,
                label=f"{ROLE_TITLES[role]}: {within:.0%} of records within",
            )
        ax.set_yscale("log")
        ax.set_xticks([])
        ax.set_xlabel("forget records (by the retrained models' median)")
        ax.set_title(f"{title} per forget record (lower: member-like)", fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, stage, "retrain_position.png")


def _fmt(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def metric_rows(record: dict) -> list[list[str]]:
    rows = []
    for name, m in record["metrics"].items():
        rule = threshold_text(m.get("threshold"))
        status = gate_status(m["passed"], m.get("inconclusive"))
        rows.append([name, m["group"], _fmt(m["value"]), _fmt(m["base"]), _fmt(m["retrain"]), rule, status])
    return rows


HEADER = ["metric", "group", "unlearned", "base", "retrain", "gate", "result"]

# A summary line is segments of (style, text); style "" (plain), "code" or "strong", so that
# Markdown and HTML each mark them up their own way from the same content.
Line = list[tuple[str, str]]


def judge_members(ev: dict) -> str:
    """`` (the mean of 3 judges ...; each alone: ...)`` for an audit record's evaluator block."""
    accs = ev.get("member_holdout_accuracy") or []
    if ev.get("members", 1) <= 1 or not accs:
        return ""
    each = ", ".join(f"{a:.3f}" for a in accs)
    return f" (the mean of {ev['members']} judges trained with successive seeds; each alone: {each})"


def earlier_erasure_lines(metric: dict | None) -> list[Line]:
    """The summary's lines for ``earlier_erasure_drop`` (a record's metric dict): checked classes and skipped ones."""
    if metric is None:
        return []
    lines: list[Line] = []
    d = metric["details"]
    for c, x in d["classes"].items():
        lines.append(
            [
                ("", f"class {c}, erased earlier, is drawn as {x['destination']} in "),
                ("strong", f"{x['share']:.0%}"),
                ("", f" of its samples ({x['base_share']:.0%} by the base model)"),
                # The fall's paired error (records from before it have none).
                *(
                    [("", f": a fall of {x['drop']:.3f} +- {x['stderr']:.3f} over {x['pairs']} pairs")]
                    if "stderr" in x
                    else []
                ),
            ]
        )
    for c, x in d["not_checked"].items():
        if isinstance(x, str):  # a record written before the skipped classes kept their readings
            lines.append([("", f"class {c}, erased earlier, is not checked: {x}")])
            continue
        lines.append(
            [
                ("", f"class {c}, erased earlier, is not checked ({x['why']}); drawn as {x['destination']} in "
                     f"{x['share']:.0%} of its samples ({x['base_share']:.0%} by the base model)"),
            ]
        )  # fmt: skip
    return lines


def _summary(record: dict, withheld: dict[str, int]) -> list[Line]:
    sel = record["selection"]
    lines: list[Line] = [
        [("", "scope: "), ("strong", sel["scope"]), ("", "; targets: "), ("code", str(sel["targets"]))],
        [
            ("", f"forget set: {sel['forget']} records ({sel['forget_distinct_images']} distinct images), sha256 "),
            ("code", f"{sel['forget_set_sha256'][:16]}…"),
            ("", f"; retained: {sel['retain']} records"),
        ],
    ]
    if still := sel.get("forget_still_retained"):
        shown = ", ".join(still[:5]) + (", ..." if len(still) > 5 else "")
        lines.append(
            [
                ("strong", f"{len(still)} forget record(s) not measured: "),
                ("", f"{shown} hold images that retained records also hold, so no erasure can remove them"),
            ]
        )
    lines += [
        [
            ("", "dataset: "),
            ("code", record["dataset"]["path"]),
            ("", " (digest "),
            ("code", f"{record['dataset']['digest'][:16]}…"),
            ("", ")"),
        ],
    ]
    for role, info in record["models"].items():
        lines.append(
            [
                ("", f"{ROLE_TITLES[role]}: "),
                ("code", info["path"]),
                ("", " (UNet sha256 "),
                ("code", f"{info['unet_sha256'][:16]}…"),
                ("", ")"),
            ]
        )
    ev = record["evaluator"]
    lines.append(
        [
            (
                "",
                f"evaluator hold-out accuracy {ev['holdout_accuracy']:.3f}{judge_members(ev)}; "
                f"features: {ev['features']}; seed {record['params']['seed']}",
            )
        ]
    )
    shown = ", ".join(f"{ROLE_TITLES[r]} {n}" for r, n in withheld.items()) or "none drawn"
    lines.append(
        [
            (
                "",
                "privacy: no forget image is shown, nor any generated sample within the extraction threshold "
                f"of one or of a model's nearest sample to one; samples withheld from the grids: {shown}",
            )
        ]
    )
    for name, title in RETRAIN_POSITION:
        if name not in record["metrics"]:
            continue
        d = record["metrics"][name]["details"]
        u, b = d["unlearned"], d["base"]
        lines.append(
            [
                ("", f"against {u['n_retrained']} retrained models ({title}): "),
                ("strong", f"{u['within']:.0%}"),
                (
                    "",
                    f" of forget records within their range ({u['expected_within']:.0%} expected of a retrained "
                    f"model), {u['below']:.0%} below it (still remembered), {u['above']:.0%} above it "
                    f"(over-forgotten); median percentile {u['median_percentile']:.2f} (0.5 for a retrained model); "
                    f"the base model: {b['within']:.0%} within, {b['below']:.0%} below",
                ),
            ]
        )
    floor = record["metrics"].get("forgotten_probability_floor")
    if floor is not None:
        d = floor["details"]
        for f, dest in d["destination"].items():
            share = d["destination_share"][f]
            drawn = (
                f"class {f} is now drawn as {dest} ({share:.0%} of its samples)"
                if share >= 0.5
                else f"class {f} is not mostly drawn as any retained class (the judge's nearest: {dest}, "
                f"{share:.0%} of its samples)"
            )
            lines.append(
                [
                    ("", f"{drawn}; the judge gives the base model's own {dest}s class {f} with probability "),
                    ("strong", f"{d['floor'][f]:.3f}"),
                    ("", ", what "), ("code", "forgotten_probability"),
                    ("", " reads for a flawless erasure onto that class"),
                ]
            )  # fmt: skip
    over = record["metrics"].get("over_erasure_accuracy")
    for f, x in (over or {}).get("details", {}).get("neighbours", {}).items():
        if x["accuracy"] is None or x["base"] is None:
            continue
        lines.append(
            [
                ("", f"over-erasure: the judge reads the samples of {x['neighbour']}, the retained class nearest "
                     f"to {f}, as {x['neighbour']} at "),
                ("strong", f"{x['accuracy']:.1%}"),
                ("", f" ({x['base']:.1%} for the base model"
                     + (f", {x['retrain']:.1%} for the retrained one" if x["retrain"] is not None else "")
                     + "; reported, not gated)"),
            ]
        )  # fmt: skip
    lines += earlier_erasure_lines(record["metrics"].get("earlier_erasure_drop"))
    back = record["metrics"].get("earlier_records_extracted")
    if back is not None:
        d = back["details"]
        lines.append(
            [
                ("", f"of the {d['unlearned']['records']} distinct images of {d['records']} records deleted earlier "
                     "in the lineage (the dataset still holds them), "),
                ("strong", f"{int(back['value'])} are drawn again"),
                ("", f" ({int(back['base'])} by the base model, nearest at "
                     f"{min(d['unlearned']['ratios'].values()):.2f}x the extraction threshold)"),
            ]
        )  # fmt: skip
    fp = record["metrics"].get("forgotten_probability")
    th = (fp or {}).get("threshold") or {}
    for f, x in (th.get("labels") or {}).items() if "floor" in th else ():
        if x["limit"] <= th["gate"]:
            continue
        lines.append(
            [
                ("", f"class {f} was judged against the judge's floor: "), ("code", "forgotten_probability"),
                ("", f" {x['probability']:.3f} against "),
                ("strong", f"{x['limit']:.3f}"),
                ("", f" (its floor {x['floor']:.3f} + "), ("code", "forgotten_probability_floor_margin"),
                ("", f" {th['margin']:g}" + (f", capped at the hard limit {th['cap']:g}" if x["floor"] + th["margin"]
                                              > th.get("cap", 1) else "")),
                ("", f"), the gate {th['gate']:g} leaving less than the margin above what a flawless erasure reads"),
            ]
        )  # fmt: skip
    return lines + inconclusive_lines(record)


def inconclusive_lines(record: dict) -> list[Line]:
    """A summary line for each gate that did not fail but could not have (either family's record)."""
    return [
        [("code", name), ("", " did not fail but is "), ("strong", "INCONCLUSIVE"), ("", f": {m['inconclusive']}")]
        for name, m in record["metrics"].items()
        if m.get("inconclusive") and m.get("passed")
    ]


def _markdown(line: Line) -> str:
    marks = {"": "{}", "code": "`{}`", "strong": "**{}**"}
    return "".join(marks[style].format(text) for style, text in line)


PICTURE_NOTES = {
    "samples": REDACTION_NOTE,
    "extraction_distances": "each model's nearest generated sample to each forget record, as a distance; "
    "the images themselves are not shown",
}


def _render_html(title: str, summary: list[Line], rows: list[list[str]], pictures: dict[str, str], stage: Path) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("unlearn_lib.audit", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    figures = [
        {
            "key": key,
            "heading": key.replace("_", " "),
            "note": PICTURE_NOTES.get(key, ""),
            "src": "data:image/png;base64," + base64.b64encode((stage / name).read_bytes()).decode("ascii"),
        }
        for key, name in pictures.items()
    ]
    return env.get_template("report.html.j2").render(
        title=title, summary=summary, header=HEADER, rows=rows, figures=figures
    )


def write_report(
    stage: Path,
    record: dict,
    meas: dict[str, ModelMeasurements],
    selection: Selection,
    dataset: Dataset,
    guard: ForgetGuard,
) -> dict[str, str]:
    """Write the pictures, report.md and report.html (self-contained) into ``stage``; return the pictures."""
    pictures: dict[str, str] = {}
    samples, withheld = _sample_grids(stage, meas, dataset, guard)
    if samples:
        pictures["samples"] = samples
    for key, fn in (
        ("class_accuracy", lambda: _class_accuracy(stage, meas, selection)),
        ("mia_roc", lambda: _roc(stage, meas)),
        ("loss_histograms", lambda: _histograms(stage, meas)),
        ("extraction_distances", lambda: _extraction_distances(stage, meas, guard)),
        ("retrain_position", lambda: _retrain_position(stage, record)),
    ):
        name = fn()
        if name:
            pictures[key] = name
    title = f"Unlearning audit: {record['verdict'].upper()}"
    render_report(stage, title, _summary(record, withheld), metric_rows(record), pictures)
    return pictures


def render_report(
    stage: Path, title: str, summary: list[Line], rows: list[list[str]], pictures: dict[str, str]
) -> None:
    """``report.md``, a self-contained ``report.html`` and its ``report_inline.html`` copy, in ``stage``.

    ``rows`` follow :data:`HEADER`; ``pictures`` maps a heading key to a PNG already in ``stage``.
    """
    lines = [f"# {title}", ""]
    lines += [f"- {_markdown(line)}" for line in summary]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    # A gate such as |x - 0.5| <= 0.1 would split its Markdown table cell.
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines.append("")
    for key, name in pictures.items():
        lines += [f"## {key.replace('_', ' ')}", ""]
        if key in PICTURE_NOTES:
            lines += [PICTURE_NOTES[key], ""]
        lines += [f"![{key}]({name})", ""]
    (stage / "report.md").write_text("\n".join(lines))
    (stage / "report.html").write_text(_render_html(title, summary, rows, pictures, stage))
    # The same page under the name viewers of one HTML artifact (the KFP UI, object stores) take.
    shutil.copyfile(stage / "report.html", stage / "report_inline.html")
