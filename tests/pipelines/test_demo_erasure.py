"""After the main job, the deleted records are gone from every store, and what held them is retired."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import file_hashes
from unlearn_lib.data import ForgetTargets, load_dataset
from unlearn_lib.data.selection import target_matcher
from unlearn_lib.errors import ModelError
from unlearn_lib.settings import Settings
from unlearn_lib.state import StateStore
from unlearn_lib.workspace import Workspace, WorkspaceError

# This file and test_evidence.py strip the demo's workspace to its stores for a while: one test at a
# time reads it, whichever worker runs it.
pytestmark = pytest.mark.usefixtures("demo_lock")

# The demo's two requests (pipelines/cli.py demo_requests): a data owner's records, then class 3.
DELETED = [ForgetTargets.build(subject_ids=["subject-canary"]), ForgetTargets.build(labels=[3])]


def _deleted_records(source) -> list:
    matchers = [target_matcher(t) for t in DELETED]
    return [r for r in source.records if any(m(r) for m in matchers)]


def _settings(root: Path) -> Settings:
    # The demo's own stores, whatever MLflow variables earlier tests left in this process.
    return Settings(workspace=str(root), mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def _unlearn(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("unlearn")), *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_no_store_holds_the_bytes_of_a_deleted_image(demo_run):
    root = demo_run["root"]
    deleted = _deleted_records(demo_run["before"]["source"])
    assert len(deleted) > 100  # the canaries' copies and every image of class 3
    wanted = {r.sha256 for r in deleted}
    ws = Workspace(root)
    # The workspace (git objects, data folders, MLflow's artifact store, exports, run folders,
    # registry cache) and every DVC cache it writes to.
    found = file_hashes(root, *ws.cache_dirs())
    leaks = sorted(str(found[h]) for h in wanted & set(found))
    assert not leaks, leaks[:10]
    assert len(found) > 1000  # the walk saw the retained data: it can fail


def test_the_retained_records_all_still_materialize(demo_run, tmp_path):
    root = demo_run["root"]
    source = demo_run["before"]["source"]
    gone = {r.record_id for r in _deleted_records(source)}
    ws = Workspace(root)
    now = ws.materialize("HEAD", tmp_path / "now")  # every file's hash is verified on load
    assert {r.record_id for r in now.records} == {r.record_id for r in source.records} - gone
    assert {r.record_id for r in load_dataset(root / "data" / "source").records} == {r.record_id for r in now.records}


def test_a_revision_from_before_the_deletions_names_the_request_that_erased_it(demo_run, tmp_path):
    ws = Workspace(demo_run["root"])
    with pytest.raises(WorkspaceError, match=r"predates records erased by REQ-0001 on \d{4}-\d\d-\d\d"):
        ws.materialize(demo_run["before"]["head"], tmp_path / "old")
    assert not (tmp_path / "old").exists()


def test_nothing_of_the_runs_is_left_behind(demo_run):
    root = demo_run["root"]
    assert not list((root / "runs" / "kfp").glob("*")), "finished runs' pipeline roots are swept"
    assert not list((root / "checkpoints").glob("*")) if (root / "checkpoints").exists() else True
    served = Workspace(root).served()
    cached = [p.name for p in (root / "runs" / "datasets").iterdir() if not p.name.startswith(".")]
    assert cached and all(name == served or Workspace(root).ledger(name) for name in cached)
    assert not list(root.rglob("*.partial*"))
    store = StateStore.open(_settings(root))
    swept = {}
    for rid in ("REQ-0001", "REQ-0002"):
        (event,) = [e for e in store.events(request_id=rid) if e["kind"] == "data_erased"]
        assert '"blobs_local": ' in event["detail"] and '"records": ' in event["detail"]
        swept[rid] = json.loads(event["detail"])["judges_swept"]
    # The audit's judges are models of their training data. The class-3 erasure's judge had to know
    # class 3 (fitted on the revision holding it): the erasure retired it with the data.
    assert swept["REQ-0002"] >= 1, swept
    judges = root / "registry-cache" / "evaluators"
    for judge in judges.iterdir() if judges.is_dir() else []:
        rev = json.loads((judge / "evaluator.json").read_text())["dataset_rev"]
        Workspace(root).check_not_erased(rev, rev[:12])  # raises for a judge fitted on erased records


def test_versions_trained_on_deleted_data_are_tombstones_and_cannot_come_back(demo_run, tmp_path):
    from unlearn_lib.tracking import configure, download_version, production_version

    root, env = demo_run["root"], demo_run["env"]
    settings = _settings(root)
    client = configure(settings)
    name = settings.model_name
    assert str(production_version(client, name).version) == "3"
    versions = {str(mv.version): mv for mv in client.search_model_versions(f"name='{name}'")}
    assert set(versions) == {"1", "2", "3"}
    # Version 1 retired when REQ-0001 completed (grace 0 in the demo), version 2 when REQ-0002 did.
    for v, erased_by in (("1", "REQ-0001"), ("2", "REQ-0002")):
        tags = versions[v].tags
        assert tags["unlearn.tombstone"] == "true" and not versions[v].aliases
        assert tags["unlearn.tombstone_reason"] == f"trained on records erased by {erased_by}"
        with pytest.raises(ModelError, match=f"version {v} of .* was retired"):
            download_version(client, name, v, tmp_path / f"v{v}")
        refused = _unlearn("registry", "rollback", v, "--workspace", str(root), env=env)
        assert refused.returncode != 0 and "was retired" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    # The lineage stays: the tombstones keep their tags.
    assert versions["2"].tags["unlearn.request_ids"] == "REQ-0001"
    # The second deletion's audit could not use the original (v1, retired with REQ-0001's records)
    # as a bar for utility: it judged against its parent alone, and says so.
    (audit,) = client.search_runs(
        [client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
        filter_string="tags.`unlearn.step` = 'audit' and tags.`unlearn.request_ids` = 'REQ-0002'",
    )
    assert audit.data.tags["unlearn.audit_original"] == "v1 retired"
    # Their weights are gone from MLflow's artifact store; production's are there.
    logged = {v: client.get_logged_model(mv.source.removeprefix("models:/")) for v, mv in versions.items()}
    for v in ("1", "2"):
        assert not list(Path(logged[v].artifact_location.removeprefix("file://")).rglob("*.safetensors"))
    assert list(Path(logged["3"].artifact_location.removeprefix("file://")).rglob("*.safetensors"))
    dry = _unlearn("registry", "prune", "--dry-run", "--workspace", str(root), env=env)
    assert dry.returncode == 0 and "nothing to retire" in dry.stdout
    assert str(production_version(client, name).version) == "3"


def test_the_evidence_needs_only_mlflow_and_the_state_database(demo_run, tmp_path):
    import json
    import shutil

    root, env = demo_run["root"], demo_run["env"]
    # The git repository, the data, the run folders, the exports and every cache go away (aside,
    # and back afterwards: the other tests of this workspace read them).
    aside = tmp_path / "aside"
    aside.mkdir()
    moved = [p for p in root.iterdir() if p.name not in ("state.db", "mlflow.db", "mlartifacts")]
    for path in moved:
        shutil.move(str(path), aside / path.name)
    try:
        for rid, version in (("REQ-0001", "2"), ("REQ-0002", "3")):
            proc = _unlearn("requests", "evidence", rid, "--workspace", str(root), env=env)
            assert proc.returncode == 0, proc.stderr
            ev = json.loads(proc.stdout)
            assert (ev["state"], ev["verdict"], ev["versions"]["new"]) == ("done", "pass", version)
            assert ev["purge"]["erased"] and ev["audit"]["gates_total"] >= 4
            # The class erasure's judge went with class 3; the records' deletion had none to retire.
            judges = "cached audit judge(s) fitted on them" in ev["purge"]["message"]
            assert judges == (rid == "REQ-0002"), ev["purge"]["message"]
        page = _unlearn("requests", "evidence", "REQ-0001", "--format", "html", "--out", str(tmp_path), "--workspace",
                        str(root), env=env)
        assert page.returncode == 0 and (tmp_path / "evidence-REQ-0001.html").is_file(), page.stderr
    finally:
        for path in moved:
            shutil.move(str(aside / path.name), path)
