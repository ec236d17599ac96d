"""Dataset versions in a real git + DVC workspace: purge commits, any revision materializes."""

from __future__ import annotations

import json
import subprocess

import pytest

from unlearn_lib.data import ForgetTargets, select
from unlearn_lib.workspace import Workspace, WorkspaceError


def test_dvc_pipeline_is_up_to_date(workspace):
    ws = Workspace(workspace)
    assert "up to date" in ws.dvc("status").lower() or ws.dvc("status").strip() == ""
    assert (workspace / "dvc.lock").is_file() and (workspace / "deletions.jsonl").read_text() == ""


def test_purge_commits_a_version_without_the_records(workspace, tmp_path):
    ws = Workspace(workspace)
    before = ws.head()
    ds = ws.dataset(before, cache_root=tmp_path / "c")
    sel = select(ds, ForgetTargets.build(subject_ids=["subject-canary", "subject-007"]))
    after = ws.purge(sel.summary()["targets"], ["REQ-9"], sel.forget_set_sha256())
    assert after != before and ws.git("status", "--porcelain").strip() == ""
    new = ws.dataset(after, cache_root=tmp_path / "c")
    gone = {r.record_id for r in (*sel.forget, *sel.purged_holdout)}
    assert gone and not gone & {r.record_id for r in new.records}
    assert len(new) == len(ds) - len(gone)
    assert not any((new.root / f"images/{rid}.png").exists() for rid in gone)
    # The old revision still materializes (the audit compares against it).
    assert len(ws.dataset(before, cache_root=tmp_path / "c2")) == len(ds)
    entry = json.loads((workspace / "deletions.jsonl").read_text().splitlines()[0])
    assert entry["request_ids"] == ["REQ-9"] and entry["forget_set_sha256"] == sel.forget_set_sha256()
    log = ws.git("log", "--format=%s", "-1")
    assert log.startswith("purge REQ-9")


def test_unknown_revision_and_non_workspace_are_refused(workspace, tmp_path):
    ws = Workspace(workspace)
    with pytest.raises(WorkspaceError, match="dataset revision 'deadbeef' does not exist"):
        ws.resolve("deadbeef")
    with pytest.raises(WorkspaceError, match="is not a git \\+ DVC repository"):
        Workspace(tmp_path).check()


def test_failed_purge_leaves_the_repository_as_it_was(workspace):
    ws = Workspace(workspace)
    # Break the purge stage's command; the ledger line must not survive the failure.
    dvc_yaml = workspace / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("unlearn dataset purge", "unlearn dataset no-such-command"))
    ws.git("commit", "-q", "-am", "break purge")
    head = ws.head()
    with pytest.raises(WorkspaceError, match="dvc repro failed"):
        ws.purge({"subject_ids": ["subject-001"]}, ["REQ-X"], "0" * 64)
    assert ws.head() == head and (workspace / "deletions.jsonl").read_text() == ""
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=workspace, capture_output=True, text=True).stdout.strip()
        == ""
    )
