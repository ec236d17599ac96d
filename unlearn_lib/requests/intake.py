"""Intake: a deletion request is checked against the world before it is queued.

The model must exist and have a production version; every target must match records of the
served dataset revision, something must remain to train on, and some forget image must leave the
training data with its record (not only copies that other, retained records hold too). A request whose targets were
already erased by an earlier request (its records are gone from the served revision and the
ledger names them) is recorded as fulfilled by that request rather than rejected. The same
check runs again before a queued request is run, since another request may have removed
its records in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ModelError, SelectionError, UnlearnError
from ..settings import Settings
from ..workspace import open_workspace
from .schema import DeletionRequest

PENDING, REJECTED, DONE = "pending", "rejected", "done"


@dataclass
class Assessment:
    state: str  # pending | rejected | done
    reason: str | None = None
    version: str | None = None
    evidence: dict | None = None


def _covering_entries(ledger: list[dict], request: DeletionRequest) -> tuple[list[dict], list[str]]:
    """Ledger entries that named the same targets, and the targets no entry named."""
    mine = {k: v for k, v in request.targets.to_dict().items() if v}
    covering, uncovered = [], []
    for kind, values in mine.items():
        for value in values if isinstance(values, list) else [values]:
            hits = [e for e in ledger if value in _as_list(e.get("targets", {}).get(kind))]
            if hits:
                covering.extend(h for h in hits if h not in covering)
            else:
                uncovered.append(f"{kind} {value}")
    return covering, uncovered


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def assess(settings: Settings, request: DeletionRequest, store: Any = None) -> Assessment:
    """Is ``request`` runnable now, already fulfilled, or to be refused (with the reason)?"""
    from ..compliance.steps import check_model_registered
    from ..data.selection import select
    from ..tracking import check_reachable

    check_reachable(settings)  # an unreachable server is not the request's fault: fail, record nothing
    try:
        check_model_registered(settings.replace(model_name=request.model))
    except ModelError as err:
        return Assessment(REJECTED, str(err))
    ws = open_workspace(settings)
    served = ws.served()
    ds = ws.dataset(served)
    try:
        sel = select(ds, request.targets, strict=True)
    except SelectionError as err:
        covering, uncovered = _covering_entries(ws.ledger(served), request)
        if covering and not uncovered:
            ids = sorted({rid for e in covering for rid in e.get("request_ids", [])})
            evidence: dict[str, Any] = {"already_erased_by": ids, "dataset_rev": served}
            version = None
            if store is not None:
                versions = sorted({r.version for rid in ids if (r := store.get_request(rid)) and r.version})
                version = ",".join(versions) or None
                evidence["version"] = version
            return Assessment(DONE, f"already erased by {', '.join(ids)}", version, evidence)
        if covering:
            return Assessment(
                REJECTED,
                f"{err}; some targets were already erased by "
                f"{', '.join(sorted({r for e in covering for r in e.get('request_ids', [])}))} "
                f"and these were not: {', '.join(uncovered)}",
            )
        return Assessment(REJECTED, str(err).replace(str(ds.root), f"the served dataset ({served[:12]})"))
    if not sel.retain:
        return Assessment(REJECTED, "the deletion targets select every training record; nothing would remain")
    try:
        # Refused before anything is purged: the unlearning step would refuse it after the purge.
        sel.erasable_or_refuse()
    except SelectionError as err:
        return Assessment(REJECTED, str(err))
    return Assessment(PENDING)


def check_same_request(existing: Any, request: DeletionRequest) -> None:
    """A request ID names one request: the same ID with other content is refused, never merged."""
    from .schema import RequestError

    if existing.request_json != request.to_json():
        raise RequestError(
            f"request {request.request_id} already exists ({existing.state}) with other content; "
            "a request ID names one request"
        )


def submit(settings: Settings, request: DeletionRequest) -> tuple[Any, Assessment]:
    """Validate ``request`` against the world and record it: pending, rejected (with the reason) or done."""
    from ..state import StateStore

    store = StateStore.open(settings)
    existing = store.get_request(request.request_id)
    if existing is not None and existing.state != REJECTED:
        check_same_request(existing, request)
        what = {"done": "was already fulfilled", "running": "is being processed"}.get(
            existing.state, f"is already {existing.state}"
        )
        raise UnlearnError(f"request {request.request_id} {what}")
    verdict = assess(settings, request, store)
    row = store.add_request(request, verdict.state, verdict.reason, verdict.version, verdict.evidence)
    return row, verdict


def batches_of(requests: list[DeletionRequest], max_requests: int = 50) -> list[Any]:
    """Group requests into batches (one model, class erasures apart from record deletions).

    ``requests`` come in the order they should run (oldest deadline first); a batch runs
    when its most urgent request would, and keeps that order inside.
    """
    from .schema import DeletionBatch

    groups: dict[tuple[str, bool], list[DeletionRequest]] = {}
    for r in requests:
        groups.setdefault((r.model, r.targets.scope == "class"), []).append(r)
    out = []
    for reqs in groups.values():
        for i in range(0, len(reqs), max_requests):
            out.append(DeletionBatch(tuple(reqs[i : i + max_requests])))
    return out
