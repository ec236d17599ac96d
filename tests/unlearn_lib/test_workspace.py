"""Dataset versions in a real git + DVC workspace: purge commits, any revision materializes."""

from __future__ import annotations

import subprocess

import pytest

from unlearn_lib.data import ForgetTargets, select
from unlearn_lib.workspace import Workspace, WorkspaceError, run_ref


def test_dvc_pipeline_is_up_to_date(workspace):
    ws = Workspace(workspace)
    assert "up to date" in ws.dvc("status").lower() or ws.dvc("status").strip() == ""
    assert (workspace / "dvc.lock").is_file() and (workspace / "deletions.jsonl").read_text() == ""


def test_purge_is_prepared_on_a_run_ref_then_published(workspace, tmp_path):
    ws = Workspace(workspace)
    before = ws.head()
    ds = ws.dataset(before, cache_root=tmp_path / "c")
    sel = select(ds, ForgetTargets.build(subject_ids=["subject-canary", "subject-007"]))
    after = ws.prepare_purge(before, sel.summary()["targets"], ["REQ-9"], sel.forget_set_sha256(), "run-1")
    # Prepared: a commit on the run's ref; nothing served moved, the working tree is untouched.
    assert after != before and ws.ref_sha(run_ref("run-1")) == after
    assert ws.head() == ws.served() == before and ws.git("status", "--porcelain").strip() == ""
    assert (workspace / "deletions.jsonl").read_text() == "" and not list(workspace.glob("runs/worktrees/*"))
    # Preparing again for the same run is a no-op.
    assert ws.prepare_purge(before, sel.summary()["targets"], ["REQ-9"], sel.forget_set_sha256(), "run-1") == after
    new = ws.dataset(after, cache_root=tmp_path / "c")
    gone = {r.record_id for r in (*sel.forget, *sel.purged_holdout)}
    assert gone and not gone & {r.record_id for r in new.records}
    assert len(new) == len(ds) - len(gone)
    assert not any((new.root / f"images/{rid}.png").exists() for rid in gone)
    # The old revision still materializes (the audit compares against it).
    assert len(ws.dataset(before, cache_root=tmp_path / "c2")) == len(ds)
    (entry,) = ws.ledger(after)
    assert entry["request_ids"] == ["REQ-9"] and entry["forget_set_sha256"] == sel.forget_set_sha256()
    assert entry["run_id"] == "run-1" and ws.git("log", "--format=%s", "-1", after).startswith("purge REQ-9")
    # Published: main, the working tree and the served data folder follow; twice is once.
    assert ws.publish(after, before) == after == ws.head() == ws.served()
    assert ws.publish(after, before) == after
    assert ws.git("status", "--porcelain").strip() == "" and ws.ledger() == [entry]
    served = {p.stem for p in (workspace / "data" / "digits" / "images").iterdir()}
    assert not gone & served and len(served) == len(new)


def test_publish_is_compare_and_set_on_the_served_revision(workspace):
    ws = Workspace(workspace)
    base = ws.head()
    first = ws.prepare_purge(base, {"subject_ids": ["subject-001"]}, ["REQ-A"], "a" * 64, "run-a")
    second = ws.prepare_purge(base, {"subject_ids": ["subject-002"]}, ["REQ-B"], "b" * 64, "run-b")
    ws.publish(first, base)
    # run-b started from the revision before REQ-A: serving it would put REQ-A's records back.
    with pytest.raises(WorkspaceError, match="served dataset moved from .* to .* during the run; rerun"):
        ws.publish(second, base)
    assert ws.served() == first
    ws.drop_run_ref("run-b")
    assert ws.ref_sha(run_ref("run-b")) is None


def test_unknown_revision_and_non_workspace_are_refused(workspace, tmp_path):
    ws = Workspace(workspace)
    with pytest.raises(WorkspaceError, match="dataset revision 'deadbeef' does not exist"):
        ws.resolve("deadbeef")
    with pytest.raises(WorkspaceError, match="is not a git \\+ DVC repository"):
        Workspace(tmp_path).check()


def test_failed_purge_leaves_the_repository_as_it_was(workspace):
    ws = Workspace(workspace)
    # Break the purge stage's command; nothing of the attempt may survive the failure.
    dvc_yaml = workspace / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("unlearn dataset purge", "unlearn dataset no-such-command"))
    ws.git("commit", "-q", "-am", "break purge")
    head = ws.head()
    with pytest.raises(WorkspaceError, match="dvc repro failed"):
        ws.prepare_purge(head, {"subject_ids": ["subject-001"]}, ["REQ-X"], "0" * 64, "run-x")
    assert ws.head() == head and (workspace / "deletions.jsonl").read_text() == ""
    assert ws.ref_sha(run_ref("run-x")) is None and not list(workspace.glob("runs/worktrees/*"))
    assert "run-x" not in ws.git("worktree", "list")
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=workspace, capture_output=True, text=True).stdout.strip()
        == ""
    )
