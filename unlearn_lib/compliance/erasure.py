"""After the commit: the deleted records' bytes leave every store, and what still carries them retires.

The register step publishes the purged dataset revision (the source data loses the records in
the same commit) and moves ``production``; from then on nothing may bring the records back.
This module does the rest, each part idempotent, so a crash in the middle is finished by the
next ``unlearn requests run-pending`` (or ``unlearn registry prune``):

- the DVC objects of the erased files leave the cache(s) and the remote (``Workspace.erase_blobs``),
- materialized copies of revisions that still hold them are swept,
- so are the audit's judges fitted on such revisions (a judge is a model of its training data),
- an event ``data_erased`` per request records what went and when (the evidence reads it),
- the retention policy retires the model versions that still hold the data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..settings import Settings
from ..state import DONE, StateStore
from ..workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)

ERASED = "data_erased"
ERASE_FAILED = "data_erase_failed"


def erase_committed(
    settings: Settings,
    ws: Workspace,
    store: StateStore,
    run_id: str | None,
    request_ids: list[str],
    before_rev: str,
    after_rev: str,
    records: int | None = None,
) -> dict[str, Any]:
    """Delete what a published deletion removed from the data stores; record it per request."""
    from .runfiles import cache_root

    # The served ledger, read once and first: a failure here leaves everything to the retry, which
    # then counts it all. A ledger that does not list these requests was not read (a failed `git
    # show` reads as empty), and an empty one would pass every cached copy as clean.
    published = ws.erasures()
    listed = {rid for e in published for rid in e.get("request_ids", [])}
    missing = [rid for rid in request_ids if rid not in listed]
    if missing:
        raise WorkspaceError(
            f"the served dataset's deletion ledger does not list {', '.join(missing)}: "
            "it could not be read or the deletion is not published; nothing erased, retried next time"
        )
    judges = sweep_judges(ws, cache_root(settings) / "evaluators", settings.lease_ttl_seconds, published)
    counts: dict[str, Any] = ws.erase_blobs(before_rev, after_rev)
    swept = ws.sweep_datasets(published=published)
    if settings.stateless:
        swept += ws.sweep_datasets(cache_root(settings) / "datasets", published=published)
    counts |= {"datasets_swept": swept, "judges_swept": judges, "source_rev": after_rev, "records": records}
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    for rid in request_ids:
        store.record_event(ERASED, request_id=rid, run_id=run_id, at=at, **counts)
    return counts


def sweep_judges(
    ws: Workspace, root: Path, live_seconds: float = 300.0, published: list[dict] | None = None
) -> int:
    """Remove the cached judges fitted on revisions that hold erased records; returns how many went.

    A class erasure's judge is trained on the revision that still holds the class (it must know
    it), so after the commit it is a model of deleted data. A judge that names no revision
    (cached before judges did) or one this repository does not know goes too: retraining one
    costs seconds. So do the staging folders a killed audit left, unless touched in the last
    ``live_seconds`` (another run may be writing one now). The served ledger is read once, and a
    failure to read it propagates: a store that is down must not pass for "fitted on erased data".
    ``published``: that ledger, when the caller has read it.
    """
    import time

    from ..audit.evaluator import META

    if not root.is_dir():
        return 0
    published = ws.erasures() if published is None else published
    gone = 0
    for entry in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            if entry.name.startswith("."):  # Evaluator.save's staging and swap folders
                if time.time() - entry.stat().st_mtime > live_seconds:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            rev = json.loads((entry / META).read_text()).get("dataset_rev")
        except FileNotFoundError:
            continue  # renamed or removed meanwhile by the run that wrote it
        except (OSError, ValueError):
            rev = None  # an unreadable judge says nothing of what it was fitted on
        if isinstance(rev, str) and rev:
            try:
                ws.check_not_erased(rev, rev[:12], published=published)
                continue
            except WorkspaceError:
                pass  # fitted on erased records, or on a revision this repository does not know
        shutil.rmtree(entry, ignore_errors=True)
        gone += not entry.exists()
    return gone


def erased(store: StateStore, request_id: str) -> bool:
    return any(e["kind"] == ERASED for e in store.events(request_id=request_id))


def finish_erasures(settings: Settings, ws: Workspace | None = None) -> list[str]:
    """Erase the data of completed requests whose erasure a crash or an outage cut short.

    Returns the request IDs handled. A failure is recorded (``data_erase_failed``) and retried
    on the next call; it never undoes the deletion itself.
    """
    from ..workspace import open_workspace

    store = StateStore.open(settings)
    todo: dict[str, list[Any]] = {}
    for row in store.list_requests([DONE], model=settings.model_name):
        ev = row.evidence or {}
        if ev.get("dataset_rev_before") and ev.get("dataset_rev_after") and not erased(store, row.request_id):
            todo.setdefault(row.run_id or row.request_id, []).append(row)
    handled: list[str] = []
    for run_id, rows in todo.items():
        ev = rows[0].evidence
        ids = [r.request_id for r in rows]
        try:
            ws = ws or open_workspace(settings)
            erase_committed(settings, ws, store, rows[0].run_id, ids, ev["dataset_rev_before"], ev["dataset_rev_after"])
            handled += ids
        except Exception as err:  # recorded and retried; the deletion itself stands
            from .steps import error_line

            for rid in ids:
                store.record_event(ERASE_FAILED, request_id=rid, run_id=run_id, error=error_line(err))
            log.warning("erasing the data of %s failed (retried next time): %s", ", ".join(ids), error_line(err))
    return handled


def apply_retention(settings: Settings, client: Any | None = None, dry_run: bool = False) -> list[Any]:
    """Retire the model versions the retention policy names (see :mod:`unlearn_lib.tracking.retention`)."""
    from ..tracking import configure
    from ..tracking.retention import prune

    client = client or configure(settings)
    return prune(client, StateStore.open(settings), settings, settings.model_name, dry_run=dry_run)
