"""The dataset contract: the digits builder, validation refusals, forget/retain selection."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from unlearn_lib.audit import AuditParams
from unlearn_lib.data import (
    DigitsConfig,
    ForgetTargets,
    Record,
    build_digits,
    forget_set_sha256,
    load_dataset,
    select,
)
from unlearn_lib.data.selection import composition_weights
from unlearn_lib.errors import DatasetError, SelectionError, UnlearnError


def test_digits_builder_writes_the_contract(digits, digits_dir):
    lines = [json.loads(line) for line in (digits_dir / "manifest.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"record_id", "subject_id", "label", "caption", "path", "sha256", "split", "schema_version"}
    assert all(rec["schema_version"] == 1 for rec in lines)
    assert {rec["split"] for rec in lines} == {"train", "holdout"}
    # 1,797 digits minus the 3 canary originals, plus 3x40 canary copies and 12 marked hold-out digits.
    assert len(digits) == 1797 - 3 + 120 + 12
    assert digits.image_shape == (1, 8, 8)
    assert digits.images.dtype == np.uint8 and digits.images.max() == 255
    assert len({r.subject_id for r in digits.records if r.subject_id}) == 121


def test_holdout_split_is_stratified(digits):
    plain = [r for r in digits.records if r.record_id.startswith("digits-")]
    train = Counter(r.label for r in plain if r.split == "train")
    hold = Counter(r.label for r in plain if r.split == "holdout")
    for label in range(10):
        share = hold[label] / (hold[label] + train[label])
        assert 0.07 < share < 0.13, (label, share)


def test_canaries_are_duplicated_distinctive_and_owned_by_one_subject(digits):
    canaries = [r for r in digits.train if r.subject_id == "subject-canary"]
    assert len(canaries) == 120
    assert len({r.sha256 for r in canaries}) == 3
    assert {r.label for r in canaries} == {7}
    imgs = digits.load_images(canaries)
    # Every canary carries a saturated 2x2 mark.
    assert all((img[0] == 255).sum() >= 4 for img in imgs)
    marked_holdout = [r for r in digits.holdout if r.caption and "corner mark" in r.caption]
    assert len(marked_holdout) == 12 and all(r.subject_id is None for r in marked_holdout)


def test_builder_is_deterministic(tmp_path):
    a = build_digits(tmp_path / "a", DigitsConfig(seed=3))
    b = build_digits(tmp_path / "b", DigitsConfig(seed=3))
    assert a.digest() == b.digest()
    assert build_digits(tmp_path / "c", DigitsConfig(seed=4)).digest() != a.digest()


def test_builder_refuses_to_overwrite_and_rejects_bad_config(tmp_path):
    build_digits(tmp_path / "d", DigitsConfig(canaries=0, holdout_canaries=0))
    with pytest.raises(UnlearnError, match="already exists"):
        build_digits(tmp_path / "d")
    with pytest.raises(UnlearnError, match="holdout_fraction"):
        build_digits(tmp_path / "e", DigitsConfig(holdout_fraction=0.9))
    assert not (tmp_path / "e").exists()


# ---- validation refusals -------------------------------------------------------------------


@pytest.fixture()
def copy_of(digits_dir, tmp_path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(digits_dir, dst)
    return dst


def _rewrite_first(root: Path, **changes) -> dict:
    lines = (root / "manifest.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec.update(changes)
    lines[0] = json.dumps(rec)
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return rec


def test_refuses_missing_file(copy_of):
    first = json.loads((copy_of / "manifest.jsonl").read_text().splitlines()[0])
    (copy_of / first["path"]).unlink()
    with pytest.raises(DatasetError, match=rf"file '{first['path']}' of record '{first['record_id']}' is missing"):
        load_dataset(copy_of)


def test_refuses_hash_mismatch(copy_of):
    first = json.loads((copy_of / "manifest.jsonl").read_text().splitlines()[0])
    other = json.loads((copy_of / "manifest.jsonl").read_text().splitlines()[5])
    shutil.copy(copy_of / other["path"], copy_of / first["path"])
    with pytest.raises(DatasetError, match="sha256 mismatch"):
        load_dataset(copy_of)


def test_refuses_unreadable_image(copy_of):
    import hashlib

    garbage = b"this is not a png"
    (copy_of / "images" / "broken.png").write_bytes(garbage)
    _rewrite_first(copy_of, path="images/broken.png", sha256=hashlib.sha256(garbage).hexdigest())
    with pytest.raises(DatasetError, match="not a readable image"):
        load_dataset(copy_of)


def test_refuses_duplicate_record_id(copy_of):
    lines = (copy_of / "manifest.jsonl").read_text().splitlines()
    (copy_of / "manifest.jsonl").write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(DatasetError, match="duplicate record_id .* \\(first on line 1\\)"):
        load_dataset(copy_of)


@pytest.mark.parametrize("path", ["../outside.png", "images/../../outside.png"])
def test_refuses_path_escaping_the_folder(copy_of, path):
    (copy_of.parent / "outside.png").write_bytes(b"x")
    _rewrite_first(copy_of, path=path)
    with pytest.raises(DatasetError, match="escapes the dataset folder"):
        load_dataset(copy_of)


def test_refuses_absolute_path(copy_of):
    _rewrite_first(copy_of, path=str((copy_of / "images").resolve() / "x.png"))
    with pytest.raises(DatasetError, match="is absolute"):
        load_dataset(copy_of)


def test_refuses_unknown_schema_version(copy_of):
    _rewrite_first(copy_of, schema_version=99)
    with pytest.raises(DatasetError, match="unknown schema_version 99"):
        load_dataset(copy_of)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": "test"}, "split must be one of"),
        ({"label": "seven"}, "label must be an integer"),
        ({"extra": 1}, "unexpected field"),
    ],
)
def test_refuses_malformed_records(copy_of, change, message):
    _rewrite_first(copy_of, **change)
    with pytest.raises(DatasetError, match=message):
        load_dataset(copy_of)


def test_refuses_missing_manifest_and_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="manifest.jsonl is missing"):
        load_dataset(tmp_path)


# ---- selection -------------------------------------------------------------------------------


def test_select_by_subject_keeps_only_training_records_in_forget(digits):
    sel = select(digits, ForgetTargets.build(subject_ids=["subject-canary"]))
    assert len(sel.forget) == 120 and sel.scope == "records"
    assert all(r.split == "train" for r in sel.forget)
    assert len(sel.retain) + len(sel.forget) == len(digits.train)
    assert not {r.record_id for r in sel.forget} & {r.record_id for r in sel.retain}
    # Matched non-members for calibration: the marked hold-out digits come first.
    ref = sel.reference(min_count=12)
    assert len(ref) == 12 and all("corner mark" in r.caption for r in ref)
    # Split in two by image: what a calibrated stop may tune on, and what only the audit sees.
    calibration, audit = sel.reference(16, part="calibration"), sel.reference(16, part="audit")
    assert {r.sha256 for r in calibration}.isdisjoint({r.sha256 for r in audit})
    for part in (calibration, audit):
        assert len(part) >= 8 and {r.record_id for r in part} <= {r.record_id for r in sel.holdout}
        marked = [r for r in part if "corner mark" in r.caption]
        assert 0 < len(marked) < 8 and part[: len(marked)] == marked  # the marked look-alikes first
        assert all(r.label == 7 for r in part[len(marked) :])  # then plain 7s fill it up
    # The audit's reference: enough marked look-alikes are the reference alone, undiluted.
    audit_only = sel.reference(16, part="audit", same_caption_min=AuditParams().reference_same_caption_min)
    assert audit_only == [r for r in audit if "corner mark" in r.caption]
    assert sel.reference(16, part="audit", same_caption_min=len(audit_only) + 1) == audit
    with pytest.raises(ValueError, match="part must be one of"):
        sel.reference(16, part="both")


def test_select_by_label_records_and_caption(digits):
    by_label = select(digits, ForgetTargets.build(labels=[3]))
    assert by_label.scope == "class" and {r.label for r in by_label.forget} == {3}
    assert by_label.purged_holdout and all(r.label == 3 for r in by_label.purged_holdout)
    ids = [by_label.forget[0].record_id, by_label.forget[1].record_id]
    by_ids = select(digits, ForgetTargets.build(record_ids=ids))
    assert [r.record_id for r in by_ids.forget] == ids
    by_caption = select(digits, ForgetTargets.build(caption_pattern="corner mark"))
    assert by_caption.scope == "concept" and len(by_caption.forget) == 120 and len(by_caption.purged_holdout) == 12
    union = select(digits, ForgetTargets.build(record_ids=ids, labels=[5]))
    assert len(union.forget) == len(select(digits, ForgetTargets.build(labels=[5])).forget) + 2


def test_a_forget_image_that_retained_records_also_hold_is_purged_but_not_unlearned(digits):
    """One copy of a 40-copy canary in a deletion: its image stays in the data under the other 39."""
    plain = [r.record_id for r in digits.train if not r.caption.endswith("corner mark")][:6]
    copy = next(r for r in digits.train if r.subject_id == "subject-canary")
    sel = select(digits, ForgetTargets.build(record_ids=[*plain, copy.record_id]))
    assert len(sel.forget) == 7  # all of them are deleted from the data
    assert [r.record_id for r in sel.still_retained] == [copy.record_id]
    assert [r.record_id for r in sel.erasable] == plain
    assert sel.summary()["forget_still_retained"] == [copy.record_id]
    # The reference looks like what is unlearned: the copy does not bring the marked look-alikes in.
    assert not any("corner mark" in r.caption for r in sel.reference(16, part="calibration", same_caption_min=4))
    alone = select(digits, ForgetTargets.build(record_ids=[copy.record_id]))
    refusal = f"also held by a retained record \\({copy.record_id}\\).*nothing to unlearn"
    with pytest.raises(SelectionError, match=refusal):
        alone.erasable_or_refuse()
    # Every copy named: the image leaves the data, nothing is still retained.
    whole = select(digits, ForgetTargets.build(subject_ids=["subject-canary"]))
    assert whole.still_retained == [] and whole.erasable == whole.forget


def test_composition_weights_give_the_reference_the_forget_sets_mix_of_kinds(digits):
    def rec(i: int, caption: str, sha: str | None = None) -> Record:
        return Record(f"r{i}", None, 7, caption, f"{i}.png", sha or f"{i:064x}", "holdout")

    plain, marked = "a handwritten digit seven", "a handwritten digit seven with a corner mark"
    # 9 plain and 1 marked forget images; a reference of 5 plain and 5 marked.
    forget = [rec(100 + i, plain) for i in range(9)] + [rec(200, marked)]
    reference = [rec(i, plain) for i in range(5)] + [rec(10 + i, marked) for i in range(5)]
    w = composition_weights(forget, reference)
    assert sum(w) == pytest.approx(10) and w[:5] == pytest.approx([1.8] * 5) and w[5:] == pytest.approx([0.2] * 5)
    # Copies of one image count once: 9 copies of a marked image and one plain image are half and half.
    copies = [rec(300 + i, marked, sha="f" * 64) for i in range(9)] + [rec(400, plain)]
    assert composition_weights(copies, reference) == pytest.approx([1.0] * 10)
    # A kind the reference lacks spreads its share over all of it; one kind alone: all weights 1.
    other = [rec(500, "a handwritten digit one")] + [rec(101, plain)]
    assert composition_weights(other, reference) == pytest.approx([1.5] * 5 + [0.5] * 5)
    assert composition_weights(forget[:3], reference[:5]) == [1.0] * 5
    assert composition_weights([], reference) == [1.0] * 10 and composition_weights(forget, []) == []
    # Reference records of a kind the forget set does not have weigh nothing when all its kinds are covered.
    assert composition_weights(forget[:3], reference) == pytest.approx([2.0] * 5 + [0.0] * 5)


def test_forget_set_hash_depends_on_ids_and_content(digits):
    sel = select(digits, ForgetTargets.build(labels=[3]))
    h = sel.forget_set_sha256()
    assert h == forget_set_sha256(list(reversed(sel.forget)))
    assert h != forget_set_sha256(sel.forget[1:])


def test_unknown_targets_are_reported(digits):
    with pytest.raises(SelectionError, match="record_ids no-such-record; subject_ids ghost"):
        select(digits, ForgetTargets.build(record_ids=["no-such-record", "digits-0000"], subject_ids=["ghost"]))
    sel = select(digits, ForgetTargets.build(record_ids=["no-such-record", "digits-0000"]), strict=False)
    assert sel.unknown == {"record_ids": ["no-such-record"]}
    with pytest.raises(SelectionError, match="labels 42"):
        select(digits, ForgetTargets.build(labels=[42]))


def test_empty_forget_set_is_an_error_not_a_no_op(digits):
    with pytest.raises(SelectionError, match="targets are empty"):
        select(digits, ForgetTargets.build())
    holdout_only = digits.holdout[0].record_id
    with pytest.raises(SelectionError, match="select no training records .*1 hold-out"):
        select(digits, ForgetTargets.build(record_ids=[holdout_only]))
    with pytest.raises(SelectionError, match="select no training records"):
        select(digits, ForgetTargets.build(record_ids=["ghost"]), strict=False)
    with pytest.raises(SelectionError, match="not a valid regular expression"):
        select(digits, ForgetTargets.build(caption_pattern="(unclosed"))
    with pytest.raises(SelectionError, match="every training record"):
        select(digits, ForgetTargets.build(labels=list(range(10))))
