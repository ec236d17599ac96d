"""A published deletion erases the data itself: the source, the DVC objects, old revisions' exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import file_hashes
from unlearn_lib.data import ForgetTargets, load_dataset, select
from unlearn_lib.workspace import Workspace, WorkspaceError


def _delete_canaries(ws: Workspace, tmp_path: Path, request_id: str = "REQ-E1") -> tuple[str, str, list]:
    before = ws.head()
    ds = ws.dataset(before, cache_root=tmp_path / "c")
    sel = select(ds, ForgetTargets.build(subject_ids=["subject-canary"]))
    gone = [*sel.forget, *sel.purged_holdout]
    after = ws.prepare_purge(before, sel.summary()["targets"], [request_id], sel.forget_set_sha256(), "run-e1")
    ws.publish(after, before)
    return before, after, gone


def test_a_published_deletion_erases_the_source_and_the_dvc_objects(workspace, tmp_path):
    ws = Workspace(workspace)
    before, after, gone = _delete_canaries(ws, tmp_path)
    deleted = {r.sha256 for r in gone}
    assert gone and deleted
    # The purge commit removed the records from the source folder too, and froze `prepare`.
    source = load_dataset(workspace / "data" / "source")
    assert not {r.record_id for r in gone} & {r.record_id for r in source.records}
    assert source.info["erased_records"] == len(gone)
    assert "frozen: true" in (workspace / "dvc.yaml").read_text()
    # The data stages are consistent (only the base model is older than the data, as after any purge).
    status = ws.dvc("status")
    assert "prepare" not in status and "purge" not in status and "train_base" in status
    # Until the objects are erased the cache still has the images: the test can see them.
    assert deleted & set(file_hashes(*ws.cache_dirs()))

    # A request the served ledger does not list (its ledger unread, or the deletion unpublished)
    # erases nothing: an empty ledger would pass every cached copy as clean.
    from unlearn_lib.compliance.erasure import erase_committed
    from unlearn_lib.settings import Settings
    from unlearn_lib.state import StateStore

    settings = Settings(workspace=str(workspace))
    with pytest.raises(WorkspaceError, match="ledger does not list REQ-ELSE"):
        erase_committed(settings, ws, StateStore.open(settings), None, ["REQ-E1", "REQ-ELSE"], before, after)
    assert deleted & set(file_hashes(*ws.cache_dirs()))

    counts = ws.erase_blobs(before, after)
    assert counts["blobs_local"] > 0 and counts["blobs"] >= counts["blobs_local"]
    left = file_hashes(workspace, *ws.cache_dirs())
    assert not deleted & set(left), [str(left[h]) for h in deleted & set(left)]
    # DVC's run cache no longer offers the data stages' outputs (the erased source among them):
    # a workspace sharing the cache reruns them instead of restoring deleted or erased data.
    import yaml

    entries = [p for cache in ws.cache_dirs() for p in (cache / "runs").rglob("*") if p.is_file()]
    assert not [p for p in entries if "data/source" in {o["path"] for o in yaml.safe_load(p.read_text())["outs"]}]
    # Twice is once.
    assert ws.erase_blobs(before, after)["blobs_local"] == 0
    # Every retained record still materializes, byte for byte (hashes verified on load).
    kept = ws.materialize("HEAD", tmp_path / "now")
    assert len(kept) == len(load_dataset(workspace / "data" / "digits"))
    assert {r.record_id for r in kept.records} == {r.record_id for r in source.records}


def test_a_revision_from_before_the_deletion_refuses_to_materialize(workspace, tmp_path):
    ws = Workspace(workspace)
    before, after, _gone = _delete_canaries(ws, tmp_path, "REQ-E2")
    # A copy materialized before the deletion is swept, and no new one can be made.
    assert (tmp_path / "c" / before).is_dir()
    # When the served ledger cannot be read (a git remote down), no copy passes for "holds erased
    # records": the sweep raises, removes nothing, and the erasure is retried.
    (tmp_path / "not-a-repository").mkdir()
    with pytest.raises(WorkspaceError):
        Workspace(tmp_path / "not-a-repository").sweep_datasets(tmp_path / "c")
    assert (tmp_path / "c" / before).is_dir()
    assert ws.sweep_datasets(tmp_path / "c") == 1 and not (tmp_path / "c" / before).exists()
    for attempt in (
        lambda: ws.materialize(before, tmp_path / "old"),
        lambda: ws.dataset(before, cache_root=tmp_path / "c"),
        lambda: ws.dataset(before[:10]),
    ):
        with pytest.raises(WorkspaceError, match=r"predates records erased by REQ-E2 on \d{4}-\d\d-\d\d"):
            attempt()
    assert not (tmp_path / "old").exists()
    assert len(ws.dataset(after, cache_root=tmp_path / "c")) > 0


def test_judges_fitted_on_erased_records_are_retired(workspace, tmp_path):
    """The audit's cached judges are models of their training data: those fitted on a revision that
    held the erased records go with the data; the judge of the purged revision stays."""
    import json
    import os
    import time

    from unlearn_lib.audit import Evaluator, train_evaluator
    from unlearn_lib.audit.evaluator import META
    from unlearn_lib.compliance.erasure import sweep_judges

    ws = Workspace(workspace)
    root = tmp_path / "evaluators"

    def judge(name: str, rev: str | None) -> None:
        ds = ws.dataset(rev or ws.head(), cache_root=tmp_path / "c")
        ev = train_evaluator(ds, epochs=1, members=1, progress=False)
        ev.meta.dataset_rev = rev
        ev.save(root / name)

    start = ws.head()
    judge("before", start)
    judge("legacy", None)  # cached before judges named their revision: no such key at all
    meta = json.loads((root / "legacy" / META).read_text())
    del meta["dataset_rev"]
    (root / "legacy" / META).write_text(json.dumps(meta))
    judge("elsewhere", None)  # a revision this repository does not know
    meta = json.loads((root / "elsewhere" / META).read_text()) | {"dataset_rev": "0" * 40}
    (root / "elsewhere" / META).write_text(json.dumps(meta))
    stale, fresh = root / ".old.partial-1-x", root / ".new.partial-2-y"
    for partial in (stale, fresh):
        partial.mkdir()
        (partial / "weights").write_bytes(b"half a judge")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    before, after, _gone = _delete_canaries(ws, tmp_path, "REQ-E3")
    assert before == start
    judge("after", after)
    # When the served ledger cannot be read, nothing passes for "fitted on erased records".
    (tmp_path / "not-a-repository").mkdir()
    with pytest.raises(WorkspaceError):
        sweep_judges(Workspace(tmp_path / "not-a-repository"), root, live_seconds=600)
    assert len(list(root.iterdir())) == 6
    assert sweep_judges(ws, root, live_seconds=600) == 3  # "before", "legacy", "elsewhere"
    assert sorted(p.name for p in root.iterdir()) == [".new.partial-2-y", "after"]
    kept = Evaluator.load(root / "after")
    assert kept.meta.dataset_rev == after and json.loads((root / "after" / META).read_text())["dataset_rev"] == after
    # Twice is once.
    assert sweep_judges(ws, root, live_seconds=600) == 0
