"""Forget-set selection: which records a deletion request removes, and what remains.

Only training records influenced the model, so they form the forget set; matching
hold-out records are deleted from the data (``purged_holdout``) but need no unlearning.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..errors import SelectionError
from .manifest import Dataset, Record

Scope = Literal["class", "concept", "records"]


@dataclass(frozen=True)
class ForgetTargets:
    """What a deletion request names. Any combination; the forget set is their union."""

    record_ids: tuple[str, ...] = ()
    subject_ids: tuple[str, ...] = ()
    labels: tuple[int, ...] = ()
    caption_pattern: str | None = None

    @classmethod
    def build(
        cls,
        record_ids: Iterable[str] = (),
        subject_ids: Iterable[str] = (),
        labels: Iterable[int] = (),
        caption_pattern: str | None = None,
    ) -> ForgetTargets:
        return cls(
            record_ids=tuple(dict.fromkeys(record_ids)),
            subject_ids=tuple(dict.fromkeys(subject_ids)),
            labels=tuple(dict.fromkeys(int(v) for v in labels)),
            caption_pattern=caption_pattern or None,
        )

    def is_empty(self) -> bool:
        return not (self.record_ids or self.subject_ids or self.labels or self.caption_pattern)

    @property
    def scope(self) -> Scope:
        """Class targets make a class-level erasure; record/subject IDs a record-level one."""
        if self.labels:
            return "class"
        if self.caption_pattern and not (self.record_ids or self.subject_ids):
            return "concept"
        return "records"

    def to_dict(self) -> dict:
        return {
            "record_ids": list(self.record_ids),
            "subject_ids": list(self.subject_ids),
            "labels": list(self.labels),
            "caption_pattern": self.caption_pattern,
        }


# With at least this many hold-out records sharing the forget records' caption (per half of the
# reference), they alone are the reference: the calibrated stop's and the audit's default.
SAME_CAPTION_MIN = 4


@dataclass
class Selection:
    targets: ForgetTargets
    forget: list[Record]
    retain: list[Record]
    holdout: list[Record]
    purged_holdout: list[Record]
    unknown: dict[str, list] = field(default_factory=dict)

    @property
    def scope(self) -> Scope:
        return self.targets.scope

    @property
    def forget_labels(self) -> list[int]:
        return sorted({r.label for r in self.forget if r.label is not None})

    def forget_set_sha256(self) -> str:
        return forget_set_sha256(self.forget)

    @property
    def still_retained(self) -> list[Record]:
        """Forget records whose image a retained record also holds (another upload of the same content).

        Deleting the record leaves the image in the training data, so no erasure can make the model
        unsee it, and a model retrained without the record still learns it: a random 2% of the digits
        records held one of the 40 copies of a canary, whose error the 39 retained copies kept at a
        member's level, so the calibrated stop could never land (the forget set read 0.90x the
        hold-out's; 1.00x without it). They are purged with the rest but left out of the unlearning
        task and of the audit's memorization tests, and counted in :meth:`summary`.
        """
        kept = self._retained_images()
        return [r for r in self.forget if r.sha256 in kept]

    def erasable_or_refuse(self) -> list[Record]:
        """:attr:`erasable`, or one clear refusal when every forget image stays in the retained data."""
        erasable = self.erasable
        if not erasable:
            ids = sorted(r.record_id for r in self.forget)
            raise SelectionError(
                f"every forget record's image is also held by a retained record ({', '.join(ids[:5])}"
                f"{', ...' if len(ids) > 5 else ''}): deleting them leaves the images in the training data, "
                "so there is nothing to unlearn; name the records holding the same images too"
            )
        return erasable

    def _measured(self) -> list[Record]:
        """What a reference must look like: the erasable records, or all of them when none is."""
        return self.erasable or self.forget

    @property
    def erasable(self) -> list[Record]:
        """The forget records whose image leaves the training data with them (see :attr:`still_retained`)."""
        kept = self._retained_images()
        return [r for r in self.forget if r.sha256 not in kept]

    def _retained_images(self) -> set[str]:
        return {r.sha256 for r in self.retain}

    def summary(self) -> dict:
        return {
            "scope": self.scope,
            "targets": self.targets.to_dict(),
            "forget": len(self.forget),
            "forget_distinct_images": len({r.sha256 for r in self.forget}),
            # Their images stay in the training data under other records: not unlearned, not audited.
            "forget_still_retained": sorted(r.record_id for r in self.still_retained),
            "retain": len(self.retain),
            "holdout": len(self.holdout),
            "purged_holdout": len(self.purged_holdout),
            "forget_labels": self.forget_labels,
            "unknown": self.unknown,
            "forget_set_sha256": self.forget_set_sha256(),
        }

    def lookalikes(self) -> list[Record]:
        """Hold-out records that share a forget record's caption (e.g. the canaries' marked kind)."""
        captions = {r.caption for r in self._measured() if r.caption}
        return [r for r in self.holdout if r.caption in captions]

    def reference(
        self, min_count: int = 16, part: str | None = None, same_caption_min: int | None = None
    ) -> list[Record]:
        """Hold-out non-members that look like the forget set, for calibration and audits.

        Prefer records that share a forget record's caption (e.g. marked canaries), then
        the forget labels, then any hold-out record, until ``min_count`` are found.

        ``same_caption_min`` (the stop and the audit pass :data:`SAME_CAPTION_MIN`): with at
        least this many same-caption records they are the reference on their own. Filling up
        with plain records of the same label dilutes it: marked digits are harder to denoise
        than plain ones (1.4x on a base model, 3.1x on one retrained without the canaries), so
        against the mixture a model never trained on the forget records looks over-forgotten
        (membership AUC 0.18-0.19 on two canary sets) and a still-memorized one looks unseen.

        ``part``: ``"calibration"`` (what an algorithm may tune itself on, e.g. a calibrated
        stop) or ``"audit"`` (what only the audit sees): each tier split in two by image
        content, so no image (nor a copy of it) is in both, and filled to ``min_count // 2``.
        """
        if part not in (None, *REFERENCE_PARTS):
            raise ValueError(f"part must be one of {REFERENCE_PARTS} or None, got {part!r}")
        measured = self._measured()
        captions = {r.caption for r in measured if r.caption}
        labels = {r.label for r in measured if r.label is not None}
        tiers = [
            self.lookalikes(),
            [r for r in self.holdout if r.label in labels and r.caption not in captions],
            [r for r in self.holdout if r.label not in labels and r.caption not in captions],
        ]
        if part is not None:
            tiers = [[r for r in tier if reference_part(r) == part] for tier in tiers]
            min_count = max(1, min_count // 2)
        if same_caption_min is not None and len(tiers[0]) >= same_caption_min:
            return list(tiers[0])
        chosen: list[Record] = []
        for tier in tiers:
            if len(chosen) >= min_count:
                break
            chosen.extend(tier)
        return chosen


REFERENCE_PARTS = ("calibration", "audit")


def distinct_records(records: Sequence[Record]) -> list[Record]:
    """One record per distinct image content, the first of each in order (as ``TensorSet.distinct``)."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.sha256 not in seen:
            seen.add(r.sha256)
            out.append(r)
    return out


def record_kind(record: Record) -> str:
    """What a record is an instance of, when a reference is matched to a forget set: its caption, else its label."""
    return f"caption: {record.caption}" if record.caption else f"label: {record.label}"


def effective_size(weights: Sequence[float]) -> float:
    """Kish's effective sample size of weighted observations: what equally weighted ones they are worth."""
    total = float(sum(weights))
    squares = float(sum(w * w for w in weights))
    return total * total / squares if squares > 0 else 0.0


def composition_weights(forget: Sequence[Record], reference: Sequence[Record]) -> list[float]:
    """Weights over ``reference`` (one per record, mean 1) that give it the forget set's mix of kinds.

    The hold-out reference stands for "these images, never trained on". A forget set of mixed
    kinds needs the same mix: a random 2% of the digits records that happens to hold one marked
    canary copy (1 image in 35) brings every marked hold-out seven into the same-caption tier (6 of
    95 reference images), and marked digits are much harder to denoise, so the unweighted reference
    error sat above what a model retrained without the records reached on them (0.90x by the stop's
    rule; 1.00x against the same records weighted to the forget set's mix). Each kind of the forget
    set (distinct images, :func:`record_kind`) weighs its share; a kind the reference lacks spreads
    its share over every reference record, as the unweighted reference did. One kind, or a mix that
    matches already: all weights 1.
    """
    kinds = [record_kind(r) for r in distinct_records(forget)]
    if not kinds:
        return [1.0] * len(reference)
    ref_kinds = [record_kind(r) for r in reference]
    count: dict[str, int] = {}
    for k in ref_kinds:
        count[k] = count.get(k, 0) + 1
    share: dict[str, float] = {}
    for k in kinds:
        share[k] = share.get(k, 0.0) + 1.0 / len(kinds)
    uncovered = sum(v for k, v in share.items() if k not in count)
    weights = [share.get(k, 0.0) / count[k] + uncovered / len(reference) for k in ref_kinds]
    total = sum(weights)
    return [w * len(reference) / total for w in weights]


def reference_part(record: Record) -> str:
    """Which half of the hold-out reference a record belongs to, by its image's content hash."""
    return REFERENCE_PARTS[int(record.sha256[:8], 16) % 2]


def forget_set_sha256(records: Sequence[Record]) -> str:
    """Identity of a forget set: sorted record IDs with their content hashes."""
    h = hashlib.sha256()
    for rec in sorted(records, key=lambda r: r.record_id):
        h.update(f"{rec.record_id}:{rec.sha256}\n".encode())
    return h.hexdigest()


def target_matcher(targets: ForgetTargets) -> Callable[[Record], bool]:
    """A predicate: does a record fall under any of ``targets``?"""
    pattern = None
    if targets.caption_pattern:
        try:
            pattern = re.compile(targets.caption_pattern, re.IGNORECASE)
        except re.error as err:
            raise SelectionError(
                f"caption pattern {targets.caption_pattern!r} is not a valid regular expression ({err})"
            ) from None
    ids = set(targets.record_ids)
    subjects = set(targets.subject_ids)
    labels = set(targets.labels)

    def matches(rec: Record) -> bool:
        return (
            rec.record_id in ids
            or (rec.subject_id is not None and rec.subject_id in subjects)
            or (rec.label is not None and rec.label in labels)
            or (pattern is not None and rec.caption is not None and pattern.search(rec.caption) is not None)
        )

    return matches


def select(dataset: Dataset, targets: ForgetTargets, strict: bool = True) -> Selection:
    """Split ``dataset`` by ``targets``.

    ``strict`` refuses targets that match nothing (a typo in a deletion request must not
    pass as done); otherwise they are listed in ``Selection.unknown``.
    """
    if targets.is_empty():
        raise SelectionError(
            "the deletion targets are empty: name record IDs, subject IDs, labels or a caption pattern"
        )
    matches = target_matcher(targets)
    forget, retain, holdout, purged = [], [], [], []
    for rec in dataset.records:
        hit = matches(rec)
        if rec.split == "train":
            (forget if hit else retain).append(rec)
        else:
            (purged if hit else holdout).append(rec)

    ids = set(targets.record_ids)
    subjects = set(targets.subject_ids)
    labels = set(targets.labels)
    pattern = re.compile(targets.caption_pattern, re.IGNORECASE) if targets.caption_pattern else None
    known_ids = {r.record_id for r in dataset.records}
    known_subjects = {r.subject_id for r in dataset.records if r.subject_id is not None}
    known_labels = set(dataset.labels)
    unknown: dict[str, list] = {}
    if missing := sorted(ids - known_ids):
        unknown["record_ids"] = missing
    if missing := sorted(subjects - known_subjects):
        unknown["subject_ids"] = missing
    if missing := sorted(labels - known_labels):
        unknown["labels"] = missing
    if pattern is not None and not any(r.caption and pattern.search(r.caption) for r in dataset.records):
        unknown["caption_pattern"] = [targets.caption_pattern]
    if unknown and strict:
        parts = [f"{k} {', '.join(map(str, v))}" for k, v in unknown.items()]
        raise SelectionError(f"unknown deletion targets in {dataset.root}: {'; '.join(parts)}")
    if not forget:
        extra = f" ({len(purged)} hold-out records matched, which no model was trained on)" if purged else ""
        raise SelectionError(f"the deletion targets select no training records{extra}; nothing to unlearn")
    if not retain:
        raise SelectionError("the deletion targets select every training record; nothing would remain")
    return Selection(
        targets=targets, forget=forget, retain=retain, holdout=holdout, purged_holdout=purged, unknown=unknown
    )
