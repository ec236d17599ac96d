"""Audit reports never hold the deleted data: no forget image, no generated near-copy of one.

The check works on pixels, independently of how the report is drawn: every PNG in the report
folder and every image embedded in the HTML is decoded and searched, at every integer scale and
offset, for an 8x8 window within the extraction threshold of a forget image or of a model's
nearest sample to one (the base model's near-copies of the canaries among them). Sample grids
are exact nearest-neighbour mosaics, so a copy drawn in them is found; matplotlib figures are
checked for holding no image at all.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from unlearn_lib.audit import AuditParams, neighbourhood_distance, run_audit
from unlearn_lib.audit.report import GRID_PER_CLASS, ForgetGuard, _render_html, neighbourhood_chunked
from unlearn_lib.data import ForgetTargets, TensorSet, load_dataset
from unlearn_lib.data.selection import select
from unlearn_lib.data.tensors import to_uint8
from unlearn_lib.errors import ConfigError
from unlearn_lib.unlearning.base import build_config
from unlearn_lib.viz import grid_image

CANARY = ForgetTargets.build(subject_ids=["subject-canary"])
# As much as the report can show: full grid rows, many extraction samples (more chances of
# near-copies), redaction asked for explicitly (false is refused, see below).
SHOW_ALL = dict(
    samples_per_class=GRID_PER_CLASS,
    extraction_samples=300,
    sampling_steps=15,
    redact_forget_images=True,
)
SCALES = range(1, 9)


# ---- the detector --------------------------------------------------------------------------------


def find_copies(
    picture: np.ndarray, refs: np.ndarray, thresholds: np.ndarray, scales=SCALES
) -> list[tuple[int, int, int, int, int, float]]:
    """Windows of ``picture`` (uint8 [H, W, 3]) within ``thresholds`` of ``refs`` (uint8 [R, h, w]).

    A copy drawn at integer scale s (nearest-neighbour) is, sampled every s pixels from its
    origin, the image itself: every scale, phase, origin and colour channel is tried. Distance:
    L2 over pixels in [0, 1], as the memorization audit measures. Returns
    (scale, y, x, channel, ref, distance) for each hit.
    """
    r, h, w = refs.shape
    flat_refs = refs.reshape(r, h * w).astype(np.float32) / 255.0
    ref_sq = (flat_refs**2).sum(1)
    hits = []
    for s in scales:
        for py in range(s):
            for px in range(s):
                sub = picture[py::s, px::s, :].astype(np.float32) / 255.0
                if sub.shape[0] < h or sub.shape[1] < w:
                    continue
                win = sliding_window_view(sub, (h, w), axis=(0, 1))  # [Y, X, 3, h, w]
                for y0 in range(0, win.shape[0], 64):
                    block = win[y0 : y0 + 64].reshape(-1, h * w)
                    d2 = (block**2).sum(1, keepdims=True) + ref_sq[None, :] - 2.0 * block @ flat_refs.T
                    d = np.sqrt(np.clip(d2, 0.0, None))
                    # A float32 margin: only a window clearly beyond the threshold counts as safe.
                    for flat, ref in zip(*np.nonzero(d <= thresholds[None, :] * 1.001 + 1e-4), strict=True):
                        yy, rest = divmod(int(flat), win.shape[1] * 3)
                        xx, ch = divmod(rest, 3)
                        hits.append((s, py + (y0 + yy) * s, px + xx * s, ch, int(ref), float(d[flat, ref])))
    return hits


def _rgb(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def _embedded_images(html: str) -> list[bytes]:
    srcs = re.findall(r"""<img[^>]*\ssrc\s*=\s*["']([^"']*)["']""", html)
    assert srcs, "the report shows no pictures at all"
    out = []
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), f"not self-contained, or not a PNG: {src[:60]}"
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    # Images can hide in CSS too; this page has none.
    assert "url(" not in html
    return out


def test_the_detector_finds_copies_at_any_scale_and_offset(digits):
    refs = digits.images[:3, 0]
    thresholds = np.full(3, 0.5)
    canvas = np.full((200, 300, 3), 255, np.uint8)
    for i, (s, y, x) in enumerate([(1, 5, 7), (4, 50, 33), (7, 111, 190)]):
        tile = np.kron(refs[i], np.ones((s, s), np.uint8))
        canvas[y : y + 8 * s, x : x + 8 * s, :] = tile[..., None]
    hits = find_copies(canvas, refs, thresholds)
    assert {(h[0], h[1], h[2], h[4]) for h in hits} >= {(1, 5, 7, 0), (4, 50, 33, 1), (7, 111, 190, 2)}
    # A grid as the report draws it, leaking: every image found in it.
    grid = np.asarray(grid_image(torch.from_numpy(digits.images[:6]), nrow=3))
    assert {h[4] for h in find_copies(grid, refs, thresholds, scales=[4])} == {0, 1, 2}
    # Nothing found where nothing is: a blank canvas.
    assert find_copies(np.full((60, 60, 3), 255, np.uint8), refs, thresholds) == []


# ---- the audit -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["unlearning-failed", "erasediff"])
def audited(request, base_model_dir, digits_dir, evaluator, tmp_path_factory):
    """A canary deletion audited with everything the report can show, plus what it must not show.

    ``unlearning-failed`` audits the base model as the unlearned one: both models' nearest
    samples are then near-copies of the canaries.
    """
    model_dir = base_model_dir if request.param == "unlearning-failed" else request.getfixturevalue("canary_model_dir")
    root = tmp_path_factory.mktemp(f"privacy-{request.param}")
    evaluator.save(root / "evaluator")
    saved: list[tuple[str, list[str]]] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, fname, *args, **kwargs):
        images = [type(a).__name__ for a in fig.findobj(lambda a: isinstance(a, matplotlib.image._ImageBase))]
        saved.append((Path(str(fname)).name, images))
        return real_savefig(fig, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
        res = run_audit(
            base_model_dir,
            model_dir,
            digits_dir,
            CANARY,
            root / "report",
            params=AuditParams(**SHOW_ALL),
            evaluator_dir=root / "evaluator",
        )
    # What must not be shown, measured here independently of the report's own guard.
    dataset = load_dataset(digits_dir)
    selection = select(dataset, CANARY)
    forget = TensorSet.from_records(dataset, selection.forget).distinct()
    train = TensorSet.from_records(dataset, dataset.train)
    p = res.record["params"]
    per_record = (p["extraction_alpha"] * neighbourhood_distance(forget, train, p["extraction_k"])).numpy()
    base_ex, unl_ex = res.measurements["base"].extraction, res.measurements["unlearned"].extraction
    copies = [i for i, ratio in enumerate(base_ex.ratios) if ratio < 1]
    refs = np.concatenate([forget.images[:, 0].numpy(), base_ex.nearest[:, 0].numpy(), unl_ex.nearest[:, 0].numpy()])
    return {
        "res": res,
        "out": root / "report",
        "saved": saved,
        "refs": refs,
        "thresholds": np.tile(per_record, 3),
        "base_copies": copies,
        "forget": forget,
    }


def test_the_base_model_made_near_copies_so_the_check_can_fail(audited):
    # The canaries are memorized by the base model (that is what they are for): its nearest
    # samples are near-copies, and the detector finds them in a grid drawn as the report draws.
    assert len(audited["base_copies"]) >= 1
    base_nearest = audited["res"].measurements["base"].extraction.nearest
    leaking = np.asarray(grid_image(base_nearest, nrow=len(base_nearest)))
    found = {h[4] for h in find_copies(leaking, audited["refs"], audited["thresholds"], scales=[4])}
    n = len(audited["forget"])
    assert {n + i for i in audited["base_copies"]} <= found


def test_the_sample_grid_had_near_copies_to_withhold(audited):
    """The base model's samples of the canaries' class include near-copies, so the grid is tested."""
    cs = audited["res"].measurements["base"].class_samples
    label = 7  # the canaries' class
    i = cs.classes.index(label)
    shown = to_uint8(cs.images[i * cs.per_class : i * cs.per_class + GRID_PER_CLASS])
    d = torch.cdist(shown.float().div(255).flatten(1), torch.from_numpy(audited["refs"]).float().div(255).flatten(1))
    near = (d.numpy() <= audited["thresholds"][None, :]).any(1)
    assert near.sum() >= 1
    # And the unredacted grid of those samples would have leaked them.
    leaking = np.asarray(grid_image(shown, nrow=GRID_PER_CLASS))
    assert find_copies(leaking, audited["refs"], audited["thresholds"], scales=[4])


def test_no_report_picture_holds_a_forget_image_or_a_near_copy(audited):
    out = audited["out"]
    pngs = sorted(out.rglob("*.png"))
    assert {p.name for p in pngs} >= {"samples.png", "extraction_distances.png", "mia_roc.png"}
    html = (out / "report.html").read_text()
    embedded = _embedded_images(html)
    assert _embedded_images((out / "report_inline.html").read_text()) == embedded
    pictures = {hashlib.sha256(p.read_bytes()).hexdigest(): (p.name, p.read_bytes()) for p in pngs}
    for i, png in enumerate(embedded):
        pictures.setdefault(hashlib.sha256(png).hexdigest(), (f"report.html image {i}", png))
    for name, png in pictures.values():
        hits = find_copies(_rgb(png), audited["refs"], audited["thresholds"])
        assert hits == [], f"{name} holds deleted data: (scale, y, x, channel, reference, distance) {hits[:5]}"


def test_plots_hold_no_image_and_only_the_sample_grid_is_drawn_otherwise(audited):
    saved = dict(audited["saved"])
    assert len(saved) >= 4, "the recording hook saw no figures"
    assert all(images == [] for images in saved.values()), saved
    pngs = {p.name for p in audited["out"].rglob("*.png")}
    # Every other PNG is a plot of numbers; samples.png is the PIL mosaic the tile search covers.
    assert pngs - set(saved) == {"samples.png"}
    assert "extraction_pairs.png" not in pngs


def test_the_grid_marks_what_it_withholds(audited):
    md = (audited["out"] / "report.md").read_text()
    m = re.search(r"samples withheld from the grids: base model (\d+)", md)
    assert m and int(m.group(1)) >= 1
    with Image.open(audited["out"] / "samples.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    # Withheld tiles are grey crossed in red: both colours are in the picture.
    assert (np.all(rgb == (128, 128, 128), axis=-1)).sum() > 0
    assert (np.all(rgb == (200, 0, 0), axis=-1)).sum() > 0
    assert "withheld" in (audited["out"] / "report.html").read_text()


# ---- redaction cannot be turned off ----------------------------------------------------------------


def test_turning_redaction_off_is_refused(base_model_dir, digits_dir, tmp_path):
    with pytest.raises(ConfigError, match="redact_forget_images cannot be turned off"):
        AuditParams(redact_forget_images=False).validate()
    for value in ("false", "0", "no", False):
        with pytest.raises(ConfigError, match="redact_forget_images"):
            build_config(AuditParams, {"redact_forget_images": value}, where="the audit").validate()
    # As the compliance step and the pipelines set it: accepted.
    build_config(AuditParams, {"redact_forget_images": True}, where="the audit").validate()
    build_config(AuditParams, {"redact_forget_images": "true"}, where="the audit").validate()
    AuditParams().validate()
    with pytest.raises(ConfigError, match="redact_forget_images"):
        run_audit(
            base_model_dir,
            base_model_dir,
            digits_dir,
            CANARY,
            tmp_path / "a",
            params=AuditParams(redact_forget_images=False),
        )
    assert not (tmp_path / "a").exists()


def test_the_cli_refuses_redaction_off_with_one_clear_error(base_model_dir, digits_dir, tmp_path):
    args = [sys.executable, "-m", "unlearn_lib.cli", "audit", "--base", str(base_model_dir)]
    args += ["--model", str(base_model_dir), "--dataset", str(digits_dir), "--out", str(tmp_path / "a")]
    args += ["--forget-subjects", "subject-canary", "--quiet", "--set", "redact_forget_images=false"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("unlearn: error: audit parameter redact_forget_images")
    assert not (tmp_path / "a").exists()


# ---- the parts ---------------------------------------------------------------------------------------


def test_chunked_neighbourhood_matches_the_memorization_audit(digits):
    selection = select(digits, CANARY)
    train = TensorSet.from_records(digits, digits.train)
    # Duplicated canaries and a class-sized forget set, in chunks smaller than it.
    for forget in (
        TensorSet.from_records(digits, selection.forget).distinct(),
        TensorSet.from_records(digits, [r for r in digits.train if r.label == 3]).distinct(),
    ):
        expected = neighbourhood_distance(forget, train, 50)
        assert torch.allclose(neighbourhood_chunked(forget, train, 50, chunk=7), expected, atol=1e-5)


def test_guard_withholds_within_the_threshold_only(digits):
    forget = TensorSet.from_records(digits, digits.train[:2])
    guard = ForgetGuard.build(forget, torch.tensor([1.0, 1.0]), alpha=0.5)
    far = torch.zeros_like(forget.images[:1])
    near = forget.images[:1].clone()
    near[0, 0, 0, 0] = min(255, int(near[0, 0, 0, 0]) + 40)  # one pixel off by at most 40/255
    mask = guard.near(torch.cat([forget.images, near, far]))
    assert mask[:3].tolist() == [True, True, True]
    assert torch.cdist(far.float().div(255).flatten(1), forget.images.float().div(255).flatten(1)).min() > 0.5
    assert mask[3].item() is False
    with pytest.raises(TypeError):
        guard.near(forget.images.float())


def test_report_html_escapes_what_it_shows():
    html = _render_html(
        "audit <b>",
        [[("", "path "), ("code", "<script>alert(1)</script>")]],
        [["m", "g", "1", "1", "–", "<= 0.1", "PASS"]],
        {},
        Path("."),
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<title>audit &lt;b&gt;</title>" in html and '<td class="PASS">PASS</td>' in html
