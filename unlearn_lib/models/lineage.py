"""Reading the deletions a model has absorbed from its metadata (``unlearn_model.json``).

Below both the algorithms (which honour earlier deletions) and the audit (which must not judge
a model on classes it erased before this deletion), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..data.manifest import Record
from ..data.selection import ForgetTargets, target_matcher

LINEAGE_KEY = "deletions"


def prior_deletions(lineage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The deletions a model has absorbed, oldest first (empty for a base model)."""
    return [dict(d) for d in (lineage or {}).get(LINEAGE_KEY, [])]


def erased_labels(deletions: list[dict[str, Any]]) -> list[int]:
    """Classes erased as classes; a record deletion of a few 7s does not make 7 an erased class."""
    out: set[int] = set()
    for d in deletions:
        if d.get("scope") == "class":
            out.update(int(c) for c in d.get("forget_labels", d.get("targets", {}).get("labels", [])))
    return sorted(out)


def record_deletion_labels(deletions: list[dict[str, Any]]) -> list[int]:
    """The labels the records of earlier record (and subject) deletions carried, outside the classes
    erased as classes. Entries written before 2026-12-06 do not record them: none from those. A
    concept (caption) deletion's records can span every class: holding all of them would hold the
    whole model to its parent, so those are left out (not measured)."""
    gone = set(erased_labels(deletions))
    out: set[int] = set()
    for d in deletions:
        if d.get("scope") == "records":
            out.update(int(c) for c in d.get("record_labels", []) if int(c) >= 0)
    return sorted(out - gone)


def deletion_targets(entry: dict[str, Any]) -> ForgetTargets:
    """What one lineage entry asked to delete."""
    t = entry.get("targets", {})
    return ForgetTargets.build(
        record_ids=t.get("record_ids", []),
        subject_ids=t.get("subject_ids", []),
        labels=t.get("labels", []),
        caption_pattern=t.get("caption_pattern"),
    )


def prior_matcher(deletions: list[dict[str, Any]]) -> Callable[[Record], bool]:
    """Does a record fall under any of ``deletions``?"""
    matchers = [target_matcher(deletion_targets(d)) for d in deletions]
    return lambda rec: any(m(rec) for m in matchers)
