"""`unlearn requests evidence`: the evidence of a deletion request, rebuilt from MLflow and the state
database alone, as JSON and as one HTML page that a browser (headless Chromium) renders.

The done request is the demo's first one (REQ-0001, a data owner's records): the session's
`unlearn pipeline demo` run (conftest ``demo_run``, shared with test_demo_erasure) erased it into
version 2, which REQ-0002's version 3 then followed in production. That workspace is shared and
read only: where a test needs it stripped to its two databases and MLflow's artifact folder (as if
the git repository, the datasets, the run folders, the exports and the caches were gone), it moves
everything else aside and back (``only_the_stores``); changes are made on copies of the stores.
The demo has no failed request: the session's under-forgetting run (``weak_pipeline_run``) gives one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import demo_workspace_held
from unlearn_lib.audit.gates import AuditParams
from unlearn_lib.requests import parse_request
from unlearn_lib.requests.evidence import NOT_ERASED, build_evidence, mlflow_links, render_html, write_evidence
from unlearn_lib.settings import Settings
from unlearn_lib.state import StateStore
from unlearn_lib.tracking import client_for

# This file and test_demo_erasure.py strip the demo's workspace to its stores for a while: one test at a
# time reads it, whichever worker runs it (``done`` holds it; the failed request's test needs no demo).

# The demo's first request (pipelines/cli.py demo_requests): every record of the canaries' owner.
REQ = "REQ-0001"
REQUEST = {
    "request_id": REQ,
    "received_at": "2026-11-20T09:30:00Z",
    "basis": "gdpr-art17",
    "model": "digits-diffusion",
    "targets": {"subject_ids": ["subject-canary"]},
    "deadline": "2026-12-20",
}
# What the evidence may read: the state database and MLflow's store (SQLite with its WAL files, artifacts).
STORES = ("state.db", "mlflow.db", "mlartifacts")
RECORD_GATES = {
    "extracted_records",
    "mia_auc",
    "retained_accuracy_drop",
    "forget_class_accuracy_drop",
    "fid_ratio",
    "retain_loss_ratio",
}


def workspace_settings(root: Path) -> Settings:
    # The workspace's own MLflow store, as the CLI (run with cli_env) finds it: earlier tests leave
    # MLFLOW_TRACKING_URI set in this process (mlflow.set_tracking_uri exports it).
    return Settings(workspace=str(root), mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def cli_env(**extra: str) -> dict:
    # The caller's UNLEARN_* or MLflow variables must not point these commands elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARN_", "AWS_")) and k != "MLFLOW_TRACKING_URI"}
    return env | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"} | extra


def evidence_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unlearn_lib.cli", "requests", "evidence", *args],
        env=env or cli_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: "), proc.stderr
    return lines[0].removeprefix("unlearn: error: ")


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium not found: apt-get install -y chromium (Debian's package; .ci/run installs it)")
    return found


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._skip += tag in ("style", "script", "head")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script", "head")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def rendered_text(page: Path, profile: Path) -> str:
    """What a person sees: the page loaded by headless Chromium, its DOM's text, whitespace folded."""
    proc = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "<body" in proc.stdout, proc.stdout[:500]
    parser = _Text()
    parser.feed(proc.stdout)
    return re.sub(r"\s+", " ", " ".join(parser.parts))


def assert_self_contained(html: str) -> None:
    assert "<style>" in html
    for needle in ("<link", "<script", "<img", "<iframe", " src=", "url(", "@import"):
        assert needle not in html, needle


@contextlib.contextmanager
def only_the_stores(root: Path, aside: Path):
    """The shared demo workspace stripped to its stores for the duration: everything else (the git
    repository, the data, the run folders, the exports, the caches) moved into ``aside``, and back
    afterwards whatever happens (the other tests of this workspace read them)."""
    aside.mkdir()
    moved: list[Path] = []
    try:
        for path in sorted(root.iterdir()):
            if not path.name.startswith(STORES):  # the databases' -wal/-shm files stay with them
                shutil.move(str(path), aside / path.name)
                moved.append(path)
        yield
    finally:
        for path in reversed(moved):
            shutil.move(str(aside / path.name), path)


@pytest.fixture(scope="module")
def done_once(demo_run, digits) -> dict:
    """The demo's REQ-0001, erased by a real compliance run, as the demo left it (read only here)."""
    with demo_workspace_held(demo_run):  # not while another test has stripped it to its stores
        return _done(demo_run, digits)


@pytest.fixture()
def done(done_once, demo_lock) -> dict:
    """``done_once``, with the demo's workspace held for the test (other tests strip it for a while)."""
    return done_once


def _done(demo_run: dict, digits) -> dict:
    from unlearn_lib.data import ForgetTargets, select

    root = demo_run["root"]
    settings = workspace_settings(root)
    store = StateStore.open(settings)
    row = store.get_request(REQ)
    assert (row.state, row.version) == ("done", "2"), row
    run = store.get_run(row.run_id)
    assert run.state == "succeeded" and run.ids == [REQ], run
    # The demo built its dataset from the same parameters as the session's (demo_run checks the digest).
    sel = select(digits, ForgetTargets.build(subject_ids=["subject-canary"]))
    client = client_for(settings)
    versions = {str(v.version): v for v in client.search_model_versions("name='digits-diffusion'")}
    mv = versions[row.version]
    erased_events = [e for e in store.events(request_id=REQ) if e["kind"] == "data_erased"]
    live = build_evidence(settings, REQ)  # with every workspace file still there
    return {
        "root": root,
        "settings": settings,
        "run": run,
        "rev_before": demo_run["before"]["head"],
        "rev_after": mv.tags["unlearn.dataset_rev_after"],
        "forget_sha256": sel.forget_set_sha256(),
        "forget_records": len(sel.forget),
        "report_uri": mv.tags["unlearn.report_uri"],
        "audit_metrics": run.steps["audit"]["metrics"],
        "retired": sorted(v for v, m in versions.items() if (m.tags or {}).get("unlearn.tombstone") == "true"),
        "base_tags": dict(versions["1"].tags or {}),
        "erased_events": erased_events,
        "live": live,
    }


def test_evidence_of_a_done_request_from_the_stores_alone(done, tmp_path):
    root = done["root"]
    with only_the_stores(root, tmp_path / "aside"):
        assert sorted(p.name for p in root.iterdir() if not p.name.endswith(("-wal", "-shm"))) == sorted(STORES)
        proc = evidence_cli(REQ, "--workspace", str(root))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    ev = json.loads(proc.stdout)
    # Exactly what it was with the git repository, the datasets and the run folders still there.
    assert {k: v for k, v in ev.items() if k != "generated_at"} == {
        k: v for k, v in done["live"].items() if k != "generated_at"
    }

    run = done["run"]
    assert (ev["kind"], ev["state"], ev["verdict"]) == ("unlearn-evidence", "done", "pass")
    assert ev["request"] == {
        "request_id": REQ,
        "basis": "gdpr-art17",
        "scope": "records",
        "model": "digits-diffusion",
        "targets": {"subject_ids": ["subject-canary"]},
    }
    times = ev["times"]
    # The demo files its requests when it runs, with the month GDPR allows: met, and not overdue.
    received = dt.datetime.fromisoformat(times["received_at"])
    assert received <= dt.datetime.fromisoformat(times["done_at"])
    deadline = (received + dt.timedelta(days=30)).replace(hour=23, minute=59, second=59)
    assert times["deadline"] == deadline.isoformat() and times["met"] is True and times["overdue"] is False
    assert (ev["attempts"], ev["batch_id"]) == (0, run.batch_id) and [r["run_id"] for r in ev["runs"]] == [run.run_id]
    assert ev["dataset"] == {
        "rev_before": done["rev_before"],
        "rev_after": done["rev_after"],
        "published": True,
        "forget_set_sha256": done["forget_sha256"],
        "forget_records": done["forget_records"],
        "scope": "records",
    }
    assert done["rev_after"] != done["rev_before"] and done["forget_records"] == 120
    # Version 2 erased REQ-0001; REQ-0002's version 3, unlearned from it, is production now, and the
    # demo's retention (no grace period) retired version 2 when version 3 replaced it.
    v = ev["versions"]
    assert (v["parent"], v["new"], v["production_now"]) == ("1", run.version, "3") == ("1", "2", "3")
    assert v["new_is_production"] is False and v["production_descends_from_new"] is True
    assert v["new_aliases"] == [] and v["new_retired"] is True and v["algorithm"] == "erasediff"
    assert ev["headline"] == (
        "REQ-0001 is done: version 2 passed 5 of 6 audit gates (1 inconclusive) and was followed by version 3 "
        "in production"
    )

    audit = ev["audit"]
    assert audit["source"] == "audit.json" and (audit["gates_passed"], audit["gates_total"]) == (5, 6)
    # Three marked images are too few for the membership gate to fail: it says so instead of PASS.
    assert audit["gates_inconclusive"] == ["mia_auc"]
    gates = {m["name"]: m for m in audit["metrics"] if m["gate"]}
    assert set(gates) == RECORD_GATES
    for name, m in gates.items():
        assert m["passed"] is True and m["threshold"]["op"] in ("<=", "within"), name
        assert m["value"] == pytest.approx(done["audit_metrics"][f"audit.{name}"]), name
    # Every metric the step measured, gate or not, with the value the state database recorded.
    assert {f"audit.{m['name']}" for m in audit["metrics"]} == set(done["audit_metrics"])
    # The demo audits with the default parameters.
    defaults = AuditParams()
    assert audit["params"]["extraction_samples"] == defaults.extraction_samples
    assert gates["extracted_records"]["samples"] == defaults.extraction_samples
    assert gates["retained_accuracy_drop"]["samples"] == defaults.samples_per_class * 10
    assert gates["mia_auc"]["threshold"]["center"] == 0.5
    assert audit["selection"]["forget_set_sha256"] == done["forget_sha256"]

    links = ev["links"]
    assert links["report_uri"] == done["report_uri"]
    assert links["mlflow_pipeline_run_id"] == run.lineage_run_id
    assert links["audit_report_artifact"] == f"runs:/{audit['mlflow_run_id']}/audit/report.html"
    assert links["model_uri"] == "models:/digits-diffusion/2"
    assert links["pipeline_run_url"] is None  # a SQLite store has no UI address: IDs only

    # What the demo's purge recorded in the state database, as it recorded it.
    purge = ev["purge"]
    assert purge["erased"] is True and len(done["erased_events"]) == 1
    (event,) = purge["events"]
    recorded = json.loads(done["erased_events"][0]["detail"])
    assert event["run_id"] == done["erased_events"][0]["run_id"]
    assert (event["records"], event["blobs_local"]) == (recorded["records"], recorded["blobs_local"])
    assert event["records"] >= done["forget_records"] and event["blobs_local"] > 0
    assert purge["message"].startswith(f"erased from the stores on {event['at']}: {event['records']} records")
    # Of the versions that held the data only version 1 (the parent) did; the retention policy
    # retired it (and version 2, which REQ-0002's data was in, but not REQ-0001's).
    assert done["retired"] == ["1", "2"]
    assert [r["version"] for r in ev["retired_versions"]] == ["1"]
    assert ev["retired_versions"][0]["retired_reason"] == "trained on records erased by REQ-0001"
    assert [(m["version"], m["relation"]) for m in ev["versions_with_the_data"]] == [("1", "parent")]
    kinds = [e["kind"] for e in ev["history"]]
    assert kinds[0] == "request.pending" and "request.done" in kinds and "run.succeeded" in kinds


def test_the_html_page_renders_the_evidence_in_a_browser(done, tmp_path):
    out_dir = tmp_path / "evidence"
    with only_the_stores(done["root"], tmp_path / "aside"):
        proc = evidence_cli(REQ, "--format", "html", "--out", str(out_dir), "--workspace", str(done["root"]))
    assert proc.returncode == 0, proc.stderr
    page = out_dir / f"evidence-{REQ}.html"
    assert proc.stdout == f"wrote {page}\n"
    assert sorted(p.name for p in out_dir.iterdir()) == [page.name]  # no temporary file left behind
    html = page.read_text()
    assert_self_contained(html)

    text = rendered_text(page, tmp_path / "chromium")
    ev = done["live"]
    assert f"Evidence of deletion request {REQ}" in text
    assert ev["headline"] in text
    assert "audit verdict: PASS" in text and "5 of 6 gates passed, 1 inconclusive" in text and "INCONCLUSIVE" in text
    for needle in (
        "version 1",
        "version 2",
        "version 3",
        "descends from version 2",
        done["rev_before"],
        done["rev_after"],
        done["forget_sha256"],
        "120 records",
        "<= 0.05",  # a threshold, escaped in the source and shown as written
        done["run"].lineage_run_id,
        "erased from the stores on",
        "retired (tombstone)",
        "trained on records erased by REQ-0001",
        *RECORD_GATES,
    ):
        assert needle in text, needle
    for name in RECORD_GATES:  # each gate's row: name, group, value, threshold, result
        result = "INCONCLUSIVE" if name == "mia_auc" else "PASS"
        assert re.search(rf"\b{name} (memorization|utility) \S+ [^A-Z]*{result}", text), name
    assert "FAIL" not in text


def test_erasure_retired_versions_and_a_pending_request_in_the_evidence(done, tmp_path):
    """On a copy of the stores: a second purge event, the version the demo's retention policy retired,
    a request still pending (its target markup, which the page must show as text; its erasure once failed)."""
    dst = tmp_path / "ws"
    dst.mkdir()
    for name in ("state.db", "mlflow.db"):
        src_db, dst_db = sqlite3.connect(done["root"] / name), sqlite3.connect(dst / name)
        src_db.backup(dst_db)
        src_db.close()
        dst_db.close()
    settings = workspace_settings(dst)
    store = StateStore.open(settings)
    store.record_event(
        "data_erased",
        request_id=REQ,
        run_id=done["run"].run_id,
        at="2026-11-28T09:00:00+00:00",
        records=120,
        blobs_local=3,
        blobs_remote=2,
        source_rev="f" * 40,
    )
    markup = "<script>alert(1)</script>"
    pending = REQUEST | {"request_id": "REQ-LATER", "targets": {"caption_pattern": markup}, "deadline": "2000-01-02"}
    pending["received_at"] = "2000-01-01T00:00:00Z"
    store.add_request(parse_request(pending), "pending")
    store.record_event("data_erase_failed", request_id="REQ-LATER", error="S3 endpoint down")

    ev = build_evidence(settings, REQ)
    purge = ev["purge"]
    assert purge["erased"] is True and len(purge["events"]) == len(done["live"]["purge"]["events"]) + 1
    mine = [e for e in purge["events"] if e["source_rev"] == "f" * 40]
    assert len(mine) == 1
    assert (mine[0]["records"], mine[0]["blobs_local"], mine[0]["blobs_remote"]) == (120, 3, 2)
    assert mine[0]["at"] == "2026-11-28T09:00:00+00:00"
    before = done["live"]["purge"]["totals"]
    assert purge["totals"]["records"] == before["records"] + 120
    assert purge["totals"]["blobs_local"] == before["blobs_local"] + 3
    assert purge["totals"]["blobs_remote"] == (before["blobs_remote"] or 0) + 2
    assert "erased from the stores on" in purge["message"]
    # Retired by the demo's retention policy when REQ-0001 completed (no grace period in the demo).
    base = done["base_tags"]
    assert base["unlearn.tombstone"] == "true" and base["unlearn.tombstoned_at"]
    assert ev["retired_versions"] == [
        {
            "version": "1",
            "relation": "parent",
            "aliases": [],
            "created_at": ev["retired_versions"][0]["created_at"],
            "kind": "base",
            "request_ids": [],
            "parent_version": None,
            "audit_verdict": None,
            "retired": True,
            "retired_reason": "trained on records erased by REQ-0001",
            "retired_at": base["unlearn.tombstoned_at"],
        }
    ]
    done_page = write_evidence(ev, tmp_path / "out", "html")
    text = rendered_text(done_page, tmp_path / "chromium")
    for needle in ("erased from the stores on", "retired (tombstone)", "trained on records erased by REQ-0001"):
        assert needle in text, needle

    later = build_evidence(settings, "REQ-LATER")
    assert (later["state"], later["verdict"], later["audit"], later["runs"]) == ("pending", None, None, [])
    assert later["headline"] == "REQ-LATER is pending: no verdict yet"
    assert later["versions"]["new"] is None and later["versions"]["production_now"] == "3"
    assert later["times"]["overdue"] is True and later["purge"]["erased"] is False
    assert later["purge"]["message"].startswith(NOT_ERASED + " (the last attempt, on ")
    assert later["purge"]["message"].endswith("failed: S3 endpoint down)")
    html = render_html(later)
    assert markup not in html and "&lt;script&gt;" in html
    page = tmp_path / "later.html"
    page.write_text(html)
    text = rendered_text(page, tmp_path / "chromium")
    assert markup in text  # shown as text, never run
    assert "no verdict yet" in text and "overdue" in text and NOT_ERASED in text


def test_without_audit_json_the_verdict_and_values_come_from_the_runs_metrics(done):
    ev = done["live"]
    run = client_for(done["settings"]).get_run(ev["audit"]["mlflow_run_id"])
    artifact = Path(run.info.artifact_uri.removeprefix("file://")) / "audit" / "audit.json"
    aside = artifact.with_name("audit.json.aside")
    artifact.rename(aside)
    try:
        fallback = build_evidence(done["settings"], REQ)
    finally:
        aside.rename(artifact)  # the shared demo workspace, as it was
    audit = fallback["audit"]
    assert (audit["source"], audit["verdict"], fallback["verdict"]) == ("mlflow-metrics", "pass", "pass")
    assert audit["note"].startswith("audit.json not available")
    values = {m["name"]: m["value"] for m in audit["metrics"]}
    assert values == {k.removeprefix("audit."): pytest.approx(v) for k, v in done["audit_metrics"].items()}
    assert all(m["threshold"] is None and m["samples"] is None for m in audit["metrics"])
    assert "source: mlflow-metrics (audit.json not available" in render_html(fallback)


def test_a_failed_request_has_evidence_of_what_failed(weak_pipeline_run, tmp_path):
    settings, out = weak_pipeline_run["settings"], weak_pipeline_run["outcome"]
    ev = build_evidence(settings, "REQ-WEAK")
    assert (ev["state"], ev["verdict"]) == ("failed", "fail")
    assert ev["audit"]["failed_gates"] and ev["audit"]["gates_passed"] < ev["audit"]["gates_total"]
    failed = {m["name"] for m in ev["audit"]["metrics"] if m["gate"] and m["passed"] is False}
    assert failed == set(ev["audit"]["failed_gates"])
    v = ev["versions"]
    assert (v["parent"], v["new"], v["production_now"]) == ("1", out.version, "1")
    assert v["new_is_production"] is False and v["production_descends_from_new"] is False
    assert v["new_aliases"] == ["candidate"]
    assert ev["dataset"]["published"] is False and ev["dataset"]["rev_before"] == weak_pipeline_run["rev_before"]
    assert ev["purge"] == {
        "erased": False,
        "message": NOT_ERASED,
        "events": [],
        "totals": None,
        "last_at": None,
        "failures": [],
    }
    assert ev["failed_step"] == "audit" and ev["runs"][0]["state"] == "failed"
    # The failed candidate still holds the data, like the version it came from.
    assert [(m["version"], m["relation"]) for m in ev["versions_with_the_data"]] == [
        ("1", "parent"),
        ("2", "candidate"),
    ]
    assert ev["headline"].startswith("REQ-WEAK failed at step audit; the audit failed (")
    assert ev["headline"].endswith("production stays on version 1")
    page = tmp_path / "weak.html"
    page.write_text(render_html(ev))
    text = rendered_text(page, tmp_path / "chromium")
    assert "audit verdict: FAIL" in text
    for name in failed:
        assert re.search(rf"\b{name} (memorization|utility|efficacy) \S+ [^A-Z]*FAIL", text), name


def test_unknown_request_and_unreachable_mlflow_are_one_line_and_write_nothing(done, tmp_path):
    from conftest import free_port

    root = done["root"]
    out_dir = tmp_path / "out"
    unknown = evidence_cli("REQ-NOPE", "--format", "html", "--out", str(out_dir), "--workspace", str(root))
    assert one_error_line(unknown) == "no request 'REQ-NOPE' in the state database"
    as_json = evidence_cli("REQ-NOPE", "--workspace", str(root))
    assert one_error_line(as_json) == "no request 'REQ-NOPE' in the state database"
    nowhere = tmp_path / "no-workspace"
    missing = evidence_cli("REQ-NOPE", "--workspace", str(nowhere))
    assert one_error_line(missing).startswith("no request 'REQ-NOPE' in the state database")
    assert not nowhere.exists()  # no empty database created on the way

    port = free_port()
    secret = "s3cret-evidence-pw"
    server = f"http://auditor:{secret}@127.0.0.1:{port}"
    env = cli_env(UNLEARN_MLFLOW_TRACKING_URI=server, UNLEARN_STATE_DB_URL=f"sqlite:///{root / 'state.db'}")
    down = evidence_cli(REQ, "--format", "html", "--out", str(out_dir), env=env, cwd=tmp_path)
    line = one_error_line(down)
    assert f"MLflow tracking server http://auditor:***@127.0.0.1:{port} " in line, line
    assert secret not in down.stdout + down.stderr
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []  # nor in the working directory
    # Links to a tracking server never carry its credentials.
    assert mlflow_links(server + "/", "7", "abc", "digits-diffusion", "2") == {
        "run_url": f"http://127.0.0.1:{port}/#/experiments/7/runs/abc",
        "model_version_url": f"http://127.0.0.1:{port}/#/models/digits-diffusion/versions/2",
    }
