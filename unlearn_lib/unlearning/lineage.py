"""Successive deletions: what a model has already absorbed, and how a later erasure honours it.

Each ``erase`` appends one entry to ``lineage["deletions"]`` in the output model's
``unlearn_model.json``: the parent's entries, then its own (targets, scope, the labels
erased, forget-set hash and size, algorithm, date, parent digest and, for class remaps, where
each erased class was sent). The base model has none.

A later erasure from such a model reads them back so that:

* no record an earlier deletion matched is trained on again: it is taken out of the retain
  set (otherwise the retain loss re-teaches an erased class: measured, erasing 5 after 3
  brought class 3 back to 0.92) and out of the hold-out reference;
* no remap target is an erased class (erasing 1 after 8 must not send 1 onto 8);
* the earlier erased classes are passed to the algorithm (``UnlearningTask.erased_labels``)
  so EraseDiff keeps them under its forgetting constraint (see ``keep_forgotten``);
* records an earlier record deletion matched, when the dataset still holds them, are passed too
  (``UnlearningTask.erased_records``, distinct images a retained record does not also hold), so
  EraseDiff keeps them forgotten as well (``keep_forgotten_records_weight``).

When the dataset given still holds records of an earlier deletion (the CLI with the same
folder, rather than the pipeline's purged one), they are excluded automatically and one
warning line says how many.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from ..data.manifest import Record
from ..data.selection import Selection

# Re-exported: they are part of this module's API; they live below the audit and the algorithms.
from ..models.lineage import LINEAGE_KEY as LINEAGE_KEY
from ..models.lineage import deletion_targets as deletion_targets
from ..models.lineage import erased_labels as erased_labels
from ..models.lineage import prior_deletions as prior_deletions
from ..models.lineage import prior_matcher as prior_matcher
from ..models.lineage import record_deletion_labels as record_deletion_labels

log = logging.getLogger(__name__)


def prior_class_mapping(deletions: list[dict[str, Any]]) -> dict[int, int]:
    """Where each earlier erased class was last sent (later deletions override earlier ones)."""
    out: dict[int, int] = {}
    for d in deletions:
        for src, dst in (d.get("mapping") or {}).items():
            out[int(src)] = int(dst)
    return out


@dataclass
class PriorExclusion:
    """What an earlier deletion took out of this erasure's data."""

    deletions: int
    erased_labels: list[int]
    # Train records matched by an earlier deletion and not by this one: neither retained nor forgotten.
    excluded_train: list[Record] = field(default_factory=list)
    excluded_holdout: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "deletions": self.deletions,
            "erased_labels": self.erased_labels,
            "excluded_train_records": len(self.excluded_train),
            "excluded_holdout_records": self.excluded_holdout,
        }


def exclude_prior(selection: Selection, lineage: dict[str, Any] | None) -> tuple[Selection, PriorExclusion]:
    """``selection`` without the records an earlier deletion in ``lineage`` matched.

    A record this deletion names again stays in its forget set (erasing a class twice is
    allowed); one only an earlier deletion names leaves the retain set and the hold-out pool.
    """
    deletions = prior_deletions(lineage)
    info = PriorExclusion(deletions=len(deletions), erased_labels=erased_labels(deletions))
    if not deletions:
        return selection, info
    matches = prior_matcher(deletions)
    retain = [r for r in selection.retain if not matches(r)]
    holdout = [r for r in selection.holdout if not matches(r)]
    info.excluded_train = [r for r in selection.retain if matches(r)]
    info.excluded_holdout = len(selection.holdout) - len(holdout)
    if info.excluded_train or info.excluded_holdout:
        log.warning(
            "unlearn: warning: the dataset still holds %d training and %d hold-out records of %d earlier deletion(s) "
            "in this model's lineage; they are excluded from the retain set and the reference",
            len(info.excluded_train),
            info.excluded_holdout,
            len(deletions),
        )
    if not retain:
        from ..errors import SelectionError

        raise SelectionError("after this model's earlier deletions, no training record would remain")
    purged = selection.purged_holdout + [r for r in selection.holdout if matches(r)]
    return (
        Selection(
            targets=selection.targets,
            forget=selection.forget,
            retain=retain,
            holdout=holdout,
            purged_holdout=purged,
            unknown=selection.unknown,
        ),
        info,
    )


def deletion_entry(
    selection: Selection,
    algorithm: str,
    parent_sha256: str,
    resolved_target: dict[str, Any] | None,
) -> dict[str, Any]:
    """The lineage entry one erasure adds."""
    labels = sorted({r.label for r in selection.forget if r.label is not None})
    entry: dict[str, Any] = {
        "targets": selection.targets.to_dict(),
        "scope": selection.scope,
        "forget_labels": selection.forget_labels if selection.scope == "class" else [],
        "forget_records": len(selection.forget),
        # What a record deletion's records were labelled: a later erasure, on data purged of them,
        # can still hold the model's behaviour under those labels (EraseDiff's ``records_anchor``).
        "record_labels": [] if selection.scope == "class" else labels,
        "forget_set_sha256": selection.forget_set_sha256(),
        "algorithm": algorithm,
        "parent_model_sha256": parent_sha256,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # Where the erased classes (this one's and the earlier ones kept forgotten) were last sent:
    # a later erasure follows the chain instead of sending a class onto an erased one.
    mapping = {**((resolved_target or {}).get("kept_mapping") or {}), **((resolved_target or {}).get("mapping") or {})}
    if mapping:
        entry["mapping"] = {str(k): int(v) for k, v in mapping.items()}
    return entry
