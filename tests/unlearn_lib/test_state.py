"""The state database on SQLite and on a real PostgreSQL server: migrations, the request state
machine, runs, leases (expiry, dead holders, heartbeats) and races between real processes.

Every test taking ``state_url`` runs once per backend. Races use separate Python processes
released together through their stdin, so they contend in the database, not in one interpreter.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlearn_lib.requests import parse_request
from unlearn_lib.state import (
    DONE,
    FAILED,
    PENDING,
    REJECTED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RUNNING,
    Heartbeat,
    LeaseBusy,
    StateError,
    StateStore,
    local_holder,
)

REPO = Path(__file__).resolve().parents[2]
UTC = dt.timezone.utc
REQUEST = {
    "request_id": "REQ-1",
    "received_at": "2026-11-20T10:00:00Z",
    "basis": "gdpr-art17",
    "model": "digits-diffusion",
    "targets": {"subject_ids": ["subject-001"]},
    # Far ahead: a deadline that passes while the suite is still in use reorders every listing
    # (overdue requests come first); the overdue tests give their own past deadlines.
    "deadline": "2099-12-01",
}
LEASE = "model:digits-diffusion"
# A holder on another machine: only expiry frees its lease, never death detection.
REMOTE = "pod:cluster-a:worker-1"


def req(request_id: str = "REQ-1", **changes: object):
    return parse_request(REQUEST | {"request_id": request_id} | changes)


def start(store: StateStore, run_id: str, *request_ids: str):
    return store.start_run(run_id, "digits-diffusion", f"batch-{run_id}", list(request_ids), "local", {}, "1", "rev0")


def kinds(store: StateStore, **where: str) -> list[str]:
    return [e["kind"] for e in store.events(**where)]


@pytest.fixture()
def store(state_url: str) -> StateStore:
    s = StateStore(state_url)
    s.migrate()
    return s


# ---- helper processes ------------------------------------------------------------------------------

# Each child opens the store, says "ready", waits for a line on stdin (so all of them start the
# contended call together), prints one JSON result, then waits for a last line before exiting:
# a winner that exited early would leave a lease whose holder is dead, which a slow loser could
# then rightly take over, and the race would be measured wrongly.
CHILD = r"""
import json, sys
import alembic.command, alembic.config, alembic.runtime.migration  # imported now: the race is in the database
from unlearn_lib.state import StateError, StateStore
store = StateStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
try:
    {action}
    out = {{"ok": True}}
except StateError as err:
    out = {{"ok": False, "type": type(err).__name__, "error": str(err)}}
print(json.dumps(out), flush=True)
sys.stdin.readline()
"""


def race(action: str, argvs: list[list[str]], timeout: float = 60) -> list[dict]:
    """Run ``action`` in one process per argv, released at the same moment; their results in order."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD.format(action=action), *argv],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            results.append(json.loads(line))
        for p in procs:
            p.stdin.write("exit\n")
            p.stdin.flush()
            assert p.wait(timeout=timeout) == 0
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ---- migrations ------------------------------------------------------------------------------------


def test_fresh_database_is_migrated_to_head_and_reopening_keeps_the_data(state_url):
    store = StateStore(state_url)
    assert store.revision() is None  # nothing there yet
    store.migrate()
    assert store.revision() == "0001"
    store.add_request(req(), PENDING)
    store.migrate()  # a second open in this process
    # A new process runs Alembic again on the migrated database: no error, nothing lost.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from unlearn_lib.state import StateStore; s = StateStore(sys.argv[1]); s.migrate(); "
            "print(s.revision(), s.get_request('REQ-1').state)",
            state_url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0001", PENDING]


def test_two_processes_migrate_a_fresh_database_at_once(state_url):
    results = race("store.migrate(); print(store.revision(), file=sys.stderr)", [[state_url], [state_url]])
    assert results == [{"ok": True}, {"ok": True}]
    assert StateStore(state_url).revision() == "0001"


@pytest.mark.parametrize("round_", range(6))
def test_four_processes_open_a_fresh_sqlite_file_at_once(tmp_path, round_):
    # Six rounds: before the fix about one round in ten failed.
    # All four switch the new file to WAL together; SQLite answers that deadlock with an immediate
    # "database is locked" that its busy timeout does not cover (seen in CI before the store waited
    # it out itself).
    url = f"sqlite:///{tmp_path}/state.db"
    results = race("store.migrate(); store.revision()", [[url]] * 4)
    assert results == [{"ok": True}] * 4


# ---- requests --------------------------------------------------------------------------------------


def test_add_request_refuses_a_known_id_but_takes_a_rejected_one_again(store):
    row = store.add_request(req(), PENDING)
    assert (row.request_id, row.state, row.model, row.basis, row.scope, row.attempts) == (
        "REQ-1",
        PENDING,
        "digits-diffusion",
        "gdpr-art17",
        "records",
        0,
    )
    assert row.received_at == dt.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    assert row.deadline_at == dt.datetime(2099, 12, 1, 23, 59, 59, tzinfo=UTC)  # a bare date: its end
    assert row.request == req()

    with pytest.raises(StateError, match=r"^request REQ-1 is already pending$"):
        store.add_request(req(targets={"labels": [3]}), PENDING)
    assert store.get_request("REQ-1").request == req()  # the first one stands

    store.add_request(req("REQ-2"), REJECTED, reason="unknown subject subject-999")
    assert store.get_request("REQ-2").reason == "unknown subject subject-999"
    again = store.add_request(req("REQ-2"), PENDING)
    assert (again.state, again.reason) == (PENDING, None)
    assert kinds(store, request_id="REQ-2") == ["request.rejected", "request.pending"]

    store.add_request(req("REQ-3"), DONE, reason="already erased by REQ-0", version="4")
    with pytest.raises(StateError, match=r"^request REQ-3 was already fulfilled$"):
        store.add_request(req("REQ-3"), PENDING)
    assert store.get_request("REQ-3").done_at is not None


def test_list_puts_overdue_first_then_deadline_then_received(store):
    def add(rid: str, received: str, deadline: str | None, state: str = PENDING) -> None:
        store.add_request(req(rid, received_at=received, deadline=deadline), state)

    # Added out of order on purpose; IDs say where each must end up.
    add("7-NO-DEADLINE-LATER", "2026-11-02T00:00:00Z", None)
    add("4-DEADLINE-2029", "2026-11-23T00:00:00Z", "2029-01-01")
    add("2-OVERDUE-2021", "2019-01-01T00:00:00Z", "2021-01-01")
    add("6-NO-DEADLINE-EARLY", "2026-11-01T00:00:00Z", None)
    add("5-DEADLINE-2030-A", "2026-11-22T00:00:00Z", "2030-01-01")
    # A done request is not overdue, whatever its deadline: it sorts by deadline among the rest.
    add("3-DONE-PAST-DEADLINE", "2018-01-01T00:00:00Z", "2019-06-01", state=DONE)
    add("1-OVERDUE-2020", "2019-12-01T00:00:00Z", "2020-01-01")
    add("5-DEADLINE-2030-B", "2026-11-24T00:00:00Z", "2030-01-01")
    rows = store.list_requests()
    assert [r.request_id for r in rows] == [
        "1-OVERDUE-2020",
        "2-OVERDUE-2021",
        "3-DONE-PAST-DEADLINE",
        "4-DEADLINE-2029",
        "5-DEADLINE-2030-A",
        "5-DEADLINE-2030-B",
        "6-NO-DEADLINE-EARLY",
        "7-NO-DEADLINE-LATER",
    ]
    assert [r.overdue() for r in rows[:3]] == [True, True, False]
    assert [r.request_id for r in store.list_requests([DONE])] == ["3-DONE-PAST-DEADLINE"]


def test_transitions_follow_the_state_machine(store):
    store.add_request(req(), PENDING)
    run = start(store, "run-A", "REQ-1")
    assert (run.state, run.ids) == (RUN_RUNNING, ["REQ-1"])
    row = store.get_request("REQ-1")
    assert (row.state, row.run_id) == (RUNNING, "run-A")

    # Only the run holding a request may finish it.
    with pytest.raises(StateError, match=r"^cannot move REQ-1 to done: REQ-1 is running$"):
        store.transition(["REQ-1"], DONE, run_id="run-B", version="9")
    with pytest.raises(StateError, match=r"^cannot move REQ-1 to running: REQ-1 is running$"):
        start(store, "run-B", "REQ-1")
    row = store.get_request("REQ-1")
    assert (row.state, row.run_id, row.version) == (RUNNING, "run-A", None)

    store.transition(["REQ-1"], DONE, run_id="run-A", version="2")
    with pytest.raises(StateError, match=r"^cannot move REQ-1 to running: REQ-1 is done$"):
        store.transition(["REQ-1"], RUNNING, run_id="run-C")
    with pytest.raises(StateError, match=r"^cannot move REQ-1 to failed: REQ-1 is done$"):
        store.fail_requests(["REQ-1"], None, "late", retryable=True)
    with pytest.raises(StateError, match=r"^cannot move NOPE to pending: NOPE is unknown$"):
        store.transition(["NOPE"], PENDING)
    row = store.get_request("REQ-1")
    assert (row.state, row.run_id, row.version) == (DONE, "run-A", "2")


def test_start_run_claims_all_requests_or_none(store):
    store.add_request(req("REQ-1"), PENDING)
    store.add_request(req("REQ-2"), DONE)
    store.add_request(req("REQ-3"), PENDING)
    with pytest.raises(StateError, match=r"cannot move REQ-1, REQ-2, REQ-3 to running: .*REQ-2 is done"):
        start(store, "run-X", "REQ-1", "REQ-2", "REQ-3")
    # Nothing happened: no run row, no claimed request, no event of the run.
    assert store.get_run("run-X") is None
    assert store.runs() == []
    assert [(r.request_id, r.state, r.run_id) for r in store.list_requests()] == [
        ("REQ-1", PENDING, None),
        ("REQ-2", DONE, None),
        ("REQ-3", PENDING, None),
    ]
    assert store.events(run_id="run-X") == []

    run = start(store, "run-Y", "REQ-3", "REQ-1")
    assert (run.run_id, run.ids, run.state) == ("run-Y", ["REQ-1", "REQ-3"], RUN_RUNNING)
    assert {store.get_request(r).run_id for r in ("REQ-1", "REQ-3")} == {"run-Y"}


def test_failures_count_attempts_and_decide_what_runs_again(store):
    store.add_request(req("REQ-1"), PENDING)
    store.add_request(req("REQ-2", deadline="2026-11-30"), PENDING)
    store.add_request(req("REQ-3"), PENDING)
    store.add_request(req("REQ-4"), REJECTED, reason="unknown subject")
    store.add_request(req("REQ-5"), DONE)

    start(store, "run-A", "REQ-1")
    store.fail_requests(["REQ-1"], "run-A", "MLflow down", retryable=True)
    row = store.get_request("REQ-1")
    assert (row.state, row.attempts, row.retryable, row.last_error) == (FAILED, 1, True, "MLflow down")
    store.fail_requests(["REQ-3"], None, "x" * 5000, retryable=False)  # a pending one may fail too
    row = store.get_request("REQ-3")
    assert (row.state, row.attempts, row.retryable, len(row.last_error)) == (FAILED, 1, False, 2000)

    # Pending and retryable failed requests, deadline first; never the non-retryable one.
    assert [r.request_id for r in store.runnable_requests(max_attempts=3)] == ["REQ-2", "REQ-1"]

    start(store, "run-B", "REQ-1")  # a retryable failure is claimed again
    with pytest.raises(StateError, match=r"^cannot move REQ-1 to failed: REQ-1 is running$"):
        store.fail_requests(["REQ-1"], "run-A", "stale run", retryable=True)
    store.fail_requests(["REQ-1"], "run-B", "disk full", retryable=True)
    row = store.get_request("REQ-1")
    assert (row.attempts, row.last_error, row.run_id) == (2, "disk full", "run-B")
    assert [r.request_id for r in store.runnable_requests(max_attempts=3)] == ["REQ-2", "REQ-1"]
    assert [r.request_id for r in store.runnable_requests(max_attempts=2)] == ["REQ-2"]  # the cap is reached

    # `requests retry`: back to pending from failed only, in one conditional update.
    with pytest.raises(StateError, match=r"^cannot move REQ-4 to pending: REQ-4 is rejected$"):
        store.transition(["REQ-4"], PENDING, only_from=(FAILED,), retryable=None)
    store.add_request(req("REQ-6"), PENDING)
    start(store, "run-C", "REQ-6")
    with pytest.raises(StateError, match=r"^cannot move REQ-6 to pending: REQ-6 is running$"):
        store.transition(["REQ-6"], PENDING, only_from=(FAILED,), retryable=None)
    store.transition(["REQ-3"], PENDING, only_from=(FAILED,), retryable=None)
    row = store.get_request("REQ-3")
    assert (row.state, row.retryable, row.attempts) == (PENDING, None, 1)
    assert (store.get_request("REQ-4").state, store.get_request("REQ-6").state) == (REJECTED, RUNNING)

    events = store.events(request_id="REQ-1")
    assert [(e["kind"], e["run_id"]) for e in events] == [
        ("request.pending", None),
        ("request.running", "run-A"),
        ("request.failed", "run-A"),
        ("request.running", "run-B"),
        ("request.failed", "run-B"),
    ]
    assert json.loads(events[-1]["detail"]) == {"attempts": 2, "last_error": "disk full", "retryable": True}


def test_complete_marks_requests_done_and_the_run_succeeded_together(store):
    for rid in ("REQ-1", "REQ-2", "REQ-3"):
        store.add_request(req(rid), PENDING)
    start(store, "run-A", "REQ-1", "REQ-2")
    start(store, "run-B", "REQ-3")

    # run-B cannot complete a request run-A holds: neither its own request nor the run moves.
    with pytest.raises(StateError, match=r"REQ-1 is running"):
        store.complete("run-B", ["REQ-3", "REQ-1"], "3", {"k": "v"})
    assert store.get_request("REQ-3").state == RUNNING
    assert (store.get_run("run-B").state, store.get_run("run-B").version) == (RUN_RUNNING, None)

    store.complete("run-A", ["REQ-1", "REQ-2"], "2", {"audit": "PASS"})
    for rid in ("REQ-1", "REQ-2"):
        row = store.get_request(rid)
        assert (row.state, row.version, row.evidence, row.run_id) == (DONE, "2", {"audit": "PASS"}, "run-A")
        assert row.done_at is not None
        assert kinds(store, request_id=rid) == ["request.pending", "request.running", "request.done"]
    run = store.get_run("run-A")
    assert (run.state, run.version) == (RUN_SUCCEEDED, "2") and run.ended_at is not None
    # Event times are UTC instants on both backends (SQLite returns them without a zone).
    now = dt.datetime.now(UTC)
    assert all(
        e["at"].utcoffset() == dt.timedelta(0) and abs(now - e["at"]) < dt.timedelta(minutes=1) for e in store.events()
    )
    assert kinds(store, run_id="run-A") == [
        "request.running",
        "request.running",
        "run.created",
        "request.done",
        "request.done",
        "run.succeeded",
    ]


# ---- leases ----------------------------------------------------------------------------------------


def test_lease_is_exclusive_renewed_by_its_holder_and_released_only_by_it(store):
    lease = store.acquire_lease(LEASE, "run-A", ttl=60)
    assert (lease.run_id, lease.holder) == ("run-A", local_holder())
    with pytest.raises(LeaseBusy) as busy:
        store.acquire_lease(LEASE, "run-B", ttl=60)
    assert f"{LEASE} is held by run run-A (pid {socket.gethostname()}:{os.getpid()}) until " in str(busy.value)

    before = store.lease(LEASE).expires_at
    assert store.renew_lease(LEASE, "run-A", ttl=120) is True
    assert store.lease(LEASE).expires_at > before + dt.timedelta(seconds=30)
    assert store.renew_lease(LEASE, "run-B", ttl=120) is False
    assert store.acquire_lease(LEASE, "run-A", ttl=60).run_id == "run-A"  # its holder may take it again

    store.release_lease(LEASE, "run-B")  # not the holder: nothing happens
    assert store.lease(LEASE).run_id == "run-A"
    store.release_lease(LEASE, "run-A")
    assert store.lease(LEASE) is None
    assert store.acquire_lease(LEASE, "run-B", ttl=60).run_id == "run-B"
    assert kinds(store, run_id="run-A") == ["lease.acquired", "lease.released"]


def test_an_expired_lease_is_taken_over(store):
    store.acquire_lease(LEASE, "run-A", ttl=0.2, holder=REMOTE)
    with pytest.raises(LeaseBusy, match="held by run run-A"):
        store.acquire_lease(LEASE, "run-B", ttl=60)
    time.sleep(0.3)
    assert store.acquire_lease(LEASE, "run-B", ttl=60).run_id == "run-B"
    assert store.renew_lease(LEASE, "run-A", ttl=60) is False  # the old holder learns it lost the lease
    taken = [e for e in store.events(run_id="run-B") if e["kind"] == "lease.taken_over"]
    assert len(taken) == 1 and json.loads(taken[0]["detail"]) == {"lease": LEASE, "previous": "run-A"}


HOLDER = r"""
import sys
from unlearn_lib.state import StateStore
StateStore(sys.argv[1]).acquire_lease(sys.argv[2], "run-child", ttl=3600)
print("held", flush=True)
sys.stdin.readline()
"""


def test_a_lease_of_a_dead_local_process_is_taken_over_at_once(store, state_url):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, state_url, LEASE],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held", child.stderr.read()
        held = store.lease(LEASE)
        assert held.run_id == "run-child"
        assert held.holder.startswith(f"pid:{socket.gethostname()}:{child.pid}:")
        # Alive, for an hour: nobody else gets it.
        with pytest.raises(LeaseBusy, match=f"held by run run-child \\(pid {socket.gethostname()}:{child.pid}\\)"):
            store.acquire_lease(LEASE, "run-B", ttl=60)
    finally:
        child.kill()
        child.wait()
    # Its holder is gone: taken over now, not in an hour.
    lease = store.acquire_lease(LEASE, "run-B", ttl=60)
    assert (lease.run_id, lease.holder) == ("run-B", local_holder())
    assert store.lease(LEASE).run_id == "run-B"


def test_heartbeat_keeps_a_short_lease_alive(store):
    store.acquire_lease(LEASE, "run-A", ttl=0.5)
    # A run does some work between taking its lease and starting to beat; a first beat that
    # comes only a full TTL after that lands after expiry, and the polling below sees the gap.
    time.sleep(0.1)
    attempts = 0
    with Heartbeat(store, LEASE, "run-A", ttl=0.5) as beat:
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            with pytest.raises(LeaseBusy):
                store.acquire_lease(LEASE, "run-B", ttl=60, holder=REMOTE)
            attempts += 1
            # A contender that polls; one that never pauses starves the beat of SQLite's write
            # lock (its busy handler backs off), which no real run does.
            time.sleep(0.01)
        assert beat.lost is False
    assert attempts > 50
    assert store.lease(LEASE).run_id == "run-A"
    time.sleep(0.6)  # no more beats: it expires
    assert store.acquire_lease(LEASE, "run-B", ttl=60, holder=REMOTE).run_id == "run-B"


# ---- races between processes -----------------------------------------------------------------------


@pytest.mark.parametrize("lease", ["free", "expired"])
def test_four_processes_race_for_one_lease_and_one_wins(store, state_url, lease):
    if lease == "expired":
        # The takeover path (a conditional UPDATE) rather than the first INSERT.
        store.acquire_lease(LEASE, "run-old", ttl=0.2, holder=REMOTE)
        time.sleep(0.3)
    action = "store.acquire_lease(sys.argv[2], sys.argv[3], ttl=60)"
    results = race(action, [[state_url, LEASE, f"run-{i}"] for i in range(4)])
    winners = [i for i, r in enumerate(results) if r["ok"]]
    assert len(winners) == 1, results
    assert all(r["type"] == "LeaseBusy" for r in results if not r["ok"]), results
    # Each loser is told who won, also when both wrote at once (the INSERT's or UPDATE's conflict).
    assert all(f"{LEASE} is held by run run-{winners[0]} (pid " in r["error"] for r in results if not r["ok"]), results
    assert store.lease(LEASE).run_id == f"run-{winners[0]}"
    taken = [e for e in store.events() if e["kind"] == "lease.taken_over"]
    assert [e["run_id"] for e in taken] == ([f"run-{winners[0]}"] if lease == "expired" else [])


def test_four_processes_race_to_claim_one_request_and_one_run_gets_it(store, state_url):
    store.add_request(req(), PENDING)
    action = "store.start_run(sys.argv[2], 'digits-diffusion', 'batch', ['REQ-1'], 'local', {}, '1', 'rev0')"
    results = race(action, [[state_url, f"run-{i}"] for i in range(4)])
    winners = [i for i, r in enumerate(results) if r["ok"]]
    assert len(winners) == 1, results
    assert all(r["error"] == "cannot move REQ-1 to running: REQ-1 is running" for r in results if not r["ok"])
    assert [r.run_id for r in store.runs()] == [f"run-{winners[0]}"]
    row = store.get_request("REQ-1")
    assert (row.state, row.run_id) == (RUNNING, f"run-{winners[0]}")


# ---- errors ----------------------------------------------------------------------------------------


def test_unreachable_postgres_is_a_state_error_without_the_password():
    from conftest import free_port

    port = free_port()  # nothing listens there
    store = StateStore(f"postgresql+psycopg://u:sekret@127.0.0.1:{port}/db")
    assert "sekret" not in repr(store)
    t0 = time.monotonic()
    with pytest.raises(StateError) as err:
        store.migrate()
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert "sekret" not in message and "\n" not in message
    assert message.startswith(f"state database postgresql+psycopg://u:***@127.0.0.1:{port}/db failed: ")
    with pytest.raises(StateError) as err:
        store.get_request("REQ-1")
    assert "sekret" not in str(err.value)
