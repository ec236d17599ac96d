"""`unlearn requests ...` through the real command line: intake against the registered model and
the served dataset, what ends up stored (and in which state), and credentials kept out of output.

Every command runs in its own process, as a user or a scheduler runs it. Commands that do not
depend on each other are started together (``unlearn_all``): each one imports torch, and on
two cores that is most of these tests' time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unlearn_lib.requests import parse_request
from unlearn_lib.settings import Settings
from unlearn_lib.state import DONE, PENDING, REJECTED, StateStore

REQUEST = {
    "request_id": "REQ-1",
    "received_at": "2026-11-20T10:00:00Z",
    "basis": "gdpr-art17",
    "model": "digits-diffusion",
    "targets": {"subject_ids": ["subject-001"]},
    "deadline": "2026-12-01",
}


def request(request_id: str, **changes: object) -> dict:
    return REQUEST | {"request_id": request_id} | changes


def write(path: Path, content: dict | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def cli_env(**extra: str) -> dict:
    # The caller's UNLEARN_* or MLflow variables must not point these commands elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_") and k != "MLFLOW_TRACKING_URI"}
    # A wide console, so the table's rows are not wrapped across lines.
    return env | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"} | extra


def argv(workspace: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "unlearn_lib.cli", "requests", *args, "--workspace", str(workspace)]


def unlearn_all(workspace: Path, *commands: tuple[str, ...], env: dict | None = None) -> list:
    """Run independent ``unlearn requests`` commands at once; their completed processes, in order."""
    procs = [
        subprocess.Popen(
            argv(workspace, *c), env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in commands
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def unlearn(workspace: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return unlearn_all(workspace, args, env=env)[0]


def refused(proc: subprocess.CompletedProcess) -> str:
    """The one stderr line of a command refused as a usage error (exit 2); nothing on stdout."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlearn: error: "), proc.stderr
    return lines[0].removeprefix("unlearn: error: ")


def store_of(workspace: Path) -> StateStore:
    return StateStore.open(Settings(workspace=str(workspace)))


@pytest.fixture(scope="module")
def registered(workspace_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with version 1 of digits-diffusion in production, shared by this module's tests.

    Shared because every command here already pays seconds for importing torch; each test uses
    request IDs of its own and asserts on those only. The already-erased test publishes a purge
    of subject-005, which no other test names.
    """
    from pipelines.run import ensure_base_registered
    from unlearn_lib.workspace import Workspace

    ws = tmp_path_factory.mktemp("requests-cli") / "ws"
    shutil.copytree(workspace_template, ws, symlinks=True)
    assert ensure_base_registered(Settings(workspace=str(ws)), Workspace(ws)) == "1"
    return ws


# ---- intake ----------------------------------------------------------------------------------------


def test_intake_queues_a_valid_request_and_stores_refused_ones_rejected(registered, tmp_path):
    from unlearn_lib.workspace import Workspace

    served = Workspace(registered).served()[:12]
    refusals = {
        "REQ-SUBJECT": (
            {"targets": {"subject_ids": ["subject-001", "subject-999"]}},
            f"unknown deletion targets in the served dataset ({served}): subject_ids subject-999",
        ),
        "REQ-MODEL": (
            {"model": "no-such-model"},
            "registered model 'no-such-model' does not exist in the MLflow registry",
        ),
        "REQ-LABELS": (
            {"targets": {"labels": list(range(10))}},
            "the deletion targets select every training record; nothing would remain",
        ),
        # One of a canary's 40 uploads: its image stays in the data under the other 39. Refused
        # at intake, before a purge that the unlearning step would then refuse to follow.
        "REQ-COPY": (
            {"targets": {"record_ids": ["canary-0-copy-01"]}},
            "every forget record's image is also held by a retained record (canary-0-copy-01): deleting "
            "them leaves the images in the training data, so there is nothing to unlearn; name the records "
            "holding the same images too",
        ),
    }
    files = [write(tmp_path / "REQ-1.json", request("REQ-1"))]
    files += [write(tmp_path / f"{rid}.json", request(rid, **change)) for rid, (change, _) in refusals.items()]
    valid, *refused_ones = unlearn_all(registered, *[("submit", str(f)) for f in files])
    assert (valid.returncode, valid.stdout, valid.stderr) == (0, "REQ-1: pending\n", "")
    for (rid, (_, reason)), proc in zip(refusals.items(), refused_ones, strict=True):
        assert refused(proc) == f"request {rid} refused: {reason}"

    as_json, show = unlearn_all(registered, ("list", "--json"), ("show", "REQ-SUBJECT"))
    mine = {"REQ-1", *refusals}
    listed = {r["request_id"]: r for r in json.loads(as_json.stdout) if r["request_id"] in mine}
    assert {rid: (r["state"], r["reason"]) for rid, r in listed.items()} == {
        "REQ-1": (PENDING, None),
        **{rid: (REJECTED, reason) for rid, (_, reason) in refusals.items()},
    }
    r1 = listed["REQ-1"]
    assert (r1["model"], r1["basis"], r1["scope"], r1["attempts"], r1["version"]) == (
        "digits-diffusion",
        "gdpr-art17",
        "records",
        0,
        None,
    )
    assert r1["deadline"] == "2026-12-01T23:59:59+00:00"  # a bare date: the end of that day, UTC

    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert (shown["state"], shown["reason"]) == (REJECTED, refusals["REQ-SUBJECT"][1])
    assert shown["request"]["targets"]["subject_ids"] == ["subject-001", "subject-999"]
    assert [e["kind"] for e in shown["events"]] == ["request.rejected"]

    # The same ID again: refused, whether it is the same request or another one under its name.
    other = write(tmp_path / "REQ-1-other.json", request("REQ-1", targets={"subject_ids": ["subject-002"]}))
    same, changed = unlearn_all(registered, ("submit", str(files[0])), ("submit", str(other)))
    assert refused(same) == "request REQ-1 is already pending"
    assert refused(changed) == (
        "request REQ-1 already exists (pending) with other content; a request ID names one request"
    )


def test_preflight_refuses_a_batch_whose_images_all_stay_before_anything_is_purged(registered):
    """The same check again just before a run (a request queued earlier may meet it there)."""
    from pipelines.run import preflight
    from unlearn_lib.errors import SelectionError
    from unlearn_lib.requests import DeletionBatch
    from unlearn_lib.workspace import Workspace

    ws = Workspace(registered)
    served = ws.served()
    copies = request("REQ-PRE", targets={"record_ids": ["canary-0-copy-01", "canary-0-copy-02"]})
    with pytest.raises(SelectionError, match=r"^every forget record's image is also held by a retained record"):
        preflight(Settings(workspace=str(registered)), DeletionBatch((parse_request(copies),)), "HEAD")
    assert ws.served() == served  # nothing purged, nothing published
    # With a record whose image does leave the data, the batch may run (the copy is purged beside it).
    plain = next(r.record_id for r in ws.dataset(served).train if r.record_id.startswith("digits-"))
    mixed = request("REQ-PRE2", targets={"record_ids": ["canary-0-copy-01", plain]})
    assert preflight(Settings(workspace=str(registered)), DeletionBatch((parse_request(mixed),)), "HEAD") == served


def test_malformed_input_is_refused_in_one_line_and_nothing_is_stored(registered, tmp_path):
    big = write(
        tmp_path / "big.json", request("REQ-BIG", targets={"record_ids": [f"digits-{i:07d}" for i in range(250_000)]})
    )
    size = big.stat().st_size
    assert size > 4_000_000
    latin = write(tmp_path / "latin.json", b"\xff\xfe" + json.dumps(request("REQ-LATIN")).encode())
    deep = write(
        tmp_path / "deep.json",
        json.dumps(request("REQ-DEEP"))[:-1].encode() + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    )
    newline = write(tmp_path / "newline.json", request("REQ-NL\n"))
    bell = write(tmp_path / "bell.json", request("REQ-BELL", targets={"subject_ids": ["subject-001\x07"]}))
    cases = {
        big: f"{big} is {size / (1 << 20):.1f} MiB; a request may be at most 1 MiB",
        latin: f"{latin} is not UTF-8 text (invalid byte 0xff at offset 0)",
        deep: f"{deep}: not valid JSON (nested deeper than 32 levels)",
        newline: f"{newline}: request_id contains a control character (U+000A) at position 6",
        bell: f"{bell}: targets.subject_ids[0] contains a control character (U+0007) at position 11",
    }
    for path, proc in zip(cases, unlearn_all(registered, *[("submit", str(p)) for p in cases]), strict=True):
        assert refused(proc) == cases[path]
    # Not even as rejected: malformed input is not a request.
    stored = {r.request_id for r in store_of(registered).list_requests()}
    assert not stored & {"REQ-BIG", "REQ-LATIN", "REQ-DEEP", "REQ-NL\n", "REQ-NL", "REQ-BELL"}


def test_a_request_whose_targets_were_already_erased_is_recorded_done(registered, tmp_path):
    from unlearn_lib.data import ForgetTargets
    from unlearn_lib.workspace import Workspace

    # An earlier request (REQ-OLD, fulfilled by version 2) erased subject-005 and was published.
    ws = Workspace(registered)
    base = ws.served()
    targets = ForgetTargets.build(subject_ids=["subject-005"]).to_dict()
    purged = ws.publish(ws.prepare_purge(base, targets, ["REQ-OLD"], "ab" * 32, "run-old"), base)
    store = store_of(registered)
    store.add_request(parse_request(request("REQ-OLD", targets={"subject_ids": ["subject-005"]})), DONE, version="2")

    proc = unlearn(registered, "submit", str(write(tmp_path / "r.json", request("REQ-NEW", targets=targets))))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "REQ-NEW: done (already erased by REQ-OLD)\n", "")
    row = store.get_request("REQ-NEW")
    assert (row.state, row.reason, row.version) == (DONE, "already erased by REQ-OLD", "2")
    assert row.evidence == {"already_erased_by": ["REQ-OLD"], "dataset_rev": purged, "version": "2"}
    assert row.done_at is not None


# ---- the queue -------------------------------------------------------------------------------------


def test_list_shows_an_overdue_request_first(tmp_path):
    # Listing reads the state database only: a bare folder is workspace enough.
    store = store_of(tmp_path)
    store.add_request(parse_request(request("REQ-LATER", deadline="2030-01-01")), PENDING)
    store.add_request(parse_request(request("REQ-NONE", deadline=None)), PENDING)
    store.add_request(
        parse_request(request("REQ-OVERDUE", received_at="2019-12-01T00:00:00Z", deadline="2020-01-01")), PENDING
    )
    table, as_json = unlearn_all(tmp_path, ("list",), ("list", "--json"))
    assert table.returncode == 0 and as_json.returncode == 0, (table.stderr, as_json.stderr)

    rows = [line for line in table.stdout.splitlines() if "REQ-" in line]
    assert [re.search(r"REQ-[A-Z]+", line).group() for line in rows] == ["REQ-OVERDUE", "REQ-LATER", "REQ-NONE"]
    assert "2020-01-01 23:59 OVERDUE" in rows[0] and "OVERDUE" not in rows[1] + rows[2]
    listed = json.loads(as_json.stdout)
    assert [(r["request_id"], r["overdue"]) for r in listed] == [
        ("REQ-OVERDUE", True),
        ("REQ-LATER", False),
        ("REQ-NONE", False),
    ]


def test_retry_queues_a_failed_request_again_and_nothing_else(tmp_path):
    store = store_of(tmp_path)
    for rid, state in (("REQ-FAILED", PENDING), ("REQ-DONE", DONE), ("REQ-REJECTED", REJECTED)):
        store.add_request(parse_request(request(rid)), state)
    store.fail_requests(["REQ-FAILED"], None, "audit failed", retryable=False)

    failed, done, rejected = unlearn_all(
        tmp_path, ("retry", "REQ-FAILED"), ("retry", "REQ-DONE"), ("retry", "REQ-REJECTED")
    )
    assert (failed.returncode, failed.stdout, failed.stderr) == (0, "REQ-FAILED: pending\n", "")
    row = store.get_request("REQ-FAILED")
    assert (row.state, row.retryable, row.attempts, row.last_error) == (PENDING, None, 1, "audit failed")

    assert refused(done) == "cannot move REQ-DONE to pending: REQ-DONE is done"
    # A rejected request never passed intake: retrying it would queue what intake refused.
    assert refused(rejected) == "cannot move REQ-REJECTED to pending: REQ-REJECTED is rejected"
    assert [store.get_request(r).state for r in ("REQ-DONE", "REQ-REJECTED")] == [DONE, REJECTED]


# ---- credentials -----------------------------------------------------------------------------------


def test_postgres_state_database_with_a_password_never_shows_it(registered, tmp_path, postgres_url, postgres_server):
    password = postgres_server["password"]
    env = cli_env(UNLEARN_STATE_DB_URL=postgres_url)
    proc = unlearn(registered, "submit", str(write(tmp_path / "r.json", request("REQ-PG"))), env=env)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "REQ-PG: pending\n", "")
    # The password may also come on its own, for a URL that names only the user (as pipeline steps get it).
    no_password = postgres_url.replace(f":{password}@", "@")
    env_split = cli_env(UNLEARN_STATE_DB_URL=no_password, UNLEARN_STATE_DB_PASSWORD=password)
    as_json = unlearn(registered, "list", "--json", env=env_split)
    for p in (proc, as_json):
        assert p.returncode == 0, p.stderr
        assert password not in p.stdout + p.stderr
    assert [(r["request_id"], r["state"]) for r in json.loads(as_json.stdout)] == [("REQ-PG", PENDING)]
    # It went to PostgreSQL, not to the workspace's SQLite file.
    assert StateStore(postgres_url).get_request("REQ-PG").state == PENDING
    assert store_of(registered).get_request("REQ-PG") is None


def test_unreachable_postgres_fails_in_one_line_without_the_password(tmp_path):
    from conftest import free_port

    url = f"postgresql+psycopg://unlearn:sekret@127.0.0.1:{free_port()}/unlearn"
    env = cli_env(UNLEARN_STATE_DB_URL=url)
    file = write(tmp_path / "r.json", request("REQ-1"))
    proc = unlearn(tmp_path, "submit", str(file), env=env)
    line = refused(proc)
    assert "sekret" not in proc.stdout + proc.stderr
    assert line.startswith("state database postgresql+psycopg://unlearn:***@127.0.0.1:"), line
    assert "REQ-1" not in line  # the database failed, not the request
