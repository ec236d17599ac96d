"""The state database: deletion requests and their state machine, compliance runs, leases.

One SQLAlchemy engine per URL: a SQLite file in the workspace by default, PostgreSQL when
``UNLEARN_STATE_DB_URL`` (or the settings file) names one. The schema is migrated with
Alembic when a store is opened. Every transition is one conditional ``UPDATE`` checked by
its row count, so two processes racing for the same request or lease cannot both win, on
SQLite (write transactions begin ``IMMEDIATE``) as on PostgreSQL (row locks).

Request states::

    received -> rejected (reason)                       refused at intake, never runs
             -> pending -> running (run, lease) -> done (version, evidence)
                                                -> failed (attempts, last error, retryable)
                                                -> pending (the run died and was rolled back)
    failed (retryable, attempts left) -> running ;  failed -> pending (``unlearn requests retry``)
    pending -> done (already fulfilled by another request) | failed (no longer valid)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, create_engine, event, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from ..errors import UnlearnError
from . import schema as t
from .schema import aware, utcnow

RECEIVED, REJECTED, PENDING, RUNNING, DONE, FAILED = "received", "rejected", "pending", "running", "done", "failed"
REQUEST_STATES = (RECEIVED, REJECTED, PENDING, RUNNING, DONE, FAILED)
RUN_RUNNING, RUN_SUCCEEDED, RUN_FAILED = "running", "succeeded", "failed"
# Interrupted: a step failed for a reason a retry can fix (a server down, a killed pod); the next
# attempt resumes the same run. Rolled back: the run's prepared state was discarded.
RUN_INTERRUPTED, RUN_ROLLED_BACK = "interrupted", "rolled_back"
RUN_ENDED = (RUN_SUCCEEDED, RUN_FAILED, RUN_ROLLED_BACK)

# Which states each transition may start from.
_FROM = {
    PENDING: (RECEIVED, RUNNING, FAILED, REJECTED),
    RUNNING: (PENDING, FAILED, RUNNING),
    DONE: (RECEIVED, PENDING, RUNNING, FAILED),
    FAILED: (PENDING, RUNNING, FAILED),
    REJECTED: (RECEIVED, REJECTED),
}


class StateError(UnlearnError):
    """The state database is unreachable, or a transition is not allowed from the current state."""


class LeaseBusy(StateError):
    """Another live run holds the lease."""


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<state database URL>"


@dataclass
class RequestRow:
    request_id: str
    model: str
    basis: str
    scope: str
    state: str
    request_json: str
    received_at: dt.datetime
    deadline_at: dt.datetime | None
    submitted_at: dt.datetime
    updated_at: dt.datetime
    done_at: dt.datetime | None
    reason: str | None
    attempts: int
    last_error: str | None
    retryable: bool | None
    run_id: str | None
    version: str | None
    evidence_json: str | None

    @classmethod
    def of(cls, row: Any) -> RequestRow:
        d = dict(row._mapping)
        for k in ("received_at", "deadline_at", "submitted_at", "updated_at", "done_at"):
            d[k] = aware(d[k])
        return cls(**d)

    @property
    def request(self) -> Any:
        from ..requests.schema import parse_request

        return parse_request(json.loads(self.request_json), where=f"stored request {self.request_id}")

    @property
    def evidence(self) -> dict:
        return json.loads(self.evidence_json) if self.evidence_json else {}

    def overdue(self, now: dt.datetime | None = None) -> bool:
        return (
            self.deadline_at is not None and self.state not in (DONE, REJECTED) and self.deadline_at < (now or utcnow())
        )


@dataclass
class RunRow:
    run_id: str
    model: str
    batch_id: str
    request_ids: str
    state: str
    runner: str
    attempt: int
    lineage_run_id: str | None
    config_json: str
    steps_json: str
    parent_version: str | None
    dataset_rev: str | None
    purged_rev: str | None
    forget_set_sha256: str | None
    committing: bool
    verdict: str | None
    version: str | None
    failed_step: str | None
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    ended_at: dt.datetime | None

    @classmethod
    def of(cls, row: Any) -> RunRow:
        d = dict(row._mapping)
        for k in ("created_at", "updated_at", "ended_at"):
            d[k] = aware(d[k])
        return cls(**d)

    @property
    def ids(self) -> list[str]:
        return [r for r in self.request_ids.split(",") if r]

    @property
    def config(self) -> dict:
        return json.loads(self.config_json)

    @property
    def steps(self) -> dict[str, dict]:
        return json.loads(self.steps_json or "{}")


@dataclass
class LeaseRow:
    name: str
    run_id: str
    holder: str
    acquired_at: dt.datetime
    expires_at: dt.datetime

    @classmethod
    def of(cls, row: Any) -> LeaseRow:
        d = dict(row._mapping)
        d["acquired_at"], d["expires_at"] = aware(d["acquired_at"]), aware(d["expires_at"])
        return cls(**d)


# ---- who holds a lease, and is it still alive ---------------------------------------------------


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot: a PID reused by another process differs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def local_holder() -> str:
    pid = os.getpid()
    return f"pid:{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process? A zombie (killed, not yet reaped by its parent) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def holder_is_dead(holder: str) -> bool:
    """A process lease held on this host by a process that no longer exists: break it now.

    Other holders (a pod on a cluster, another host) are only ever replaced when the lease expires.
    """
    parts = holder.split(":")
    if len(parts) != 4 or parts[0] != "pid" or parts[1] != socket.gethostname():
        return False
    pid = int(parts[2])
    if not pid_alive(pid):
        return True
    return parts[3] != "?" and _start_ticks(pid) != parts[3]


# ---- the store -----------------------------------------------------------------------------------

def _set_wal(cur: Any, patience: float = 60.0) -> None:
    """Switch a SQLite connection to WAL, waiting out other processes doing the same.

    Two processes opening a fresh database at once both hold a shared lock while they ask for the
    exclusive one the switch needs; SQLite sees the deadlock and answers "database is locked" at
    once, without calling the busy handler, so the wait has to be ours.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.04)


_ENGINES: dict[str, Engine] = {}
_MIGRATED: set[str] = set()
_LOCK = threading.Lock()


def _engine(url: str) -> Engine:
    with _LOCK:
        if url in _ENGINES:
            return _ENGINES[url]
        if url.startswith("sqlite"):
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": 60})

            @event.listens_for(engine, "connect")
            def _connect(dbapi_conn: Any, _rec: Any) -> None:
                # pysqlite's own transaction handling is off so that BEGIN IMMEDIATE below is the
                # transaction: a writer takes the lock up front instead of failing on upgrade.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=60000")
                _set_wal(cur)
                cur.close()

            @event.listens_for(engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})
        _ENGINES[url] = engine
        return engine


class StateStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    @classmethod
    def open(cls, settings: Any) -> StateStore:
        store = cls(settings.state_url)
        store.migrate()
        return store

    def __repr__(self) -> str:
        return f"StateStore({_redact(self.url)})"

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as err:
            reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
            raise StateError(f"state database {_redact(self.url)} failed: {reason}") from None

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (once per process and URL)."""
        if self.url in _MIGRATED:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        with self._tx() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        _MIGRATED.add(self.url)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def event(
        self, conn: Any, kind: str, request_id: str | None = None, run_id: str | None = None, **detail: Any
    ) -> None:
        conn.execute(
            insert(t.events).values(
                at=utcnow(),
                kind=kind,
                request_id=request_id,
                run_id=run_id,
                detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
            )
        )

    def record_event(self, kind: str, request_id: str | None = None, run_id: str | None = None, **detail: Any) -> None:
        """An event outside any state change (e.g. what was erased from which store, and when)."""
        with self._tx() as conn:
            self.event(conn, kind, request_id, run_id, **detail)

    def events(self, request_id: str | None = None, run_id: str | None = None) -> list[dict]:
        q = select(t.events).order_by(t.events.c.id)
        if request_id:
            q = q.where(t.events.c.request_id == request_id)
        if run_id:
            q = q.where(t.events.c.run_id == run_id)
        with self._tx() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for row in rows:
            row["at"] = aware(row["at"])  # SQLite hands it back without its zone, like every timestamp here
        return rows

    # ---- requests --------------------------------------------------------------------------------
    def get_request(self, request_id: str) -> RequestRow | None:
        with self._tx() as conn:
            row = conn.execute(select(t.requests).where(t.requests.c.request_id == request_id)).first()
        return RequestRow.of(row) if row else None

    def add_request(
        self,
        request: Any,
        state: str,
        reason: str | None = None,
        version: str | None = None,
        evidence: dict | None = None,
    ) -> RequestRow:
        """Record a request that was just received, in its first state after validation.

        A request ID that already exists is refused, except a rejected one, which may be sent again.
        """
        now = utcnow()
        values = {
            "model": request.model,
            "basis": request.basis,
            "scope": request.targets.scope,
            "state": state,
            "request_json": request.to_json(),
            "received_at": request.received_dt,
            "deadline_at": request.deadline_dt,
            "submitted_at": now,
            "updated_at": now,
            "done_at": now if state == DONE else None,
            "reason": reason,
            "attempts": 0,
            "last_error": None,
            "retryable": None,
            "run_id": None,
            "version": version,
            "evidence_json": json.dumps(evidence, sort_keys=True) if evidence else None,
        }
        with self._tx() as conn:
            current = conn.execute(
                select(t.requests.c.state).where(t.requests.c.request_id == request.request_id)
            ).scalar()
            if current is not None and current != REJECTED:
                what = {DONE: "was already fulfilled", RUNNING: "is being processed"}.get(
                    current, f"is already {current}"
                )
                raise StateError(f"request {request.request_id} {what}")
            if current is None:
                try:
                    conn.execute(insert(t.requests).values(request_id=request.request_id, **values))
                except IntegrityError:
                    raise StateError(f"request {request.request_id} was submitted twice at once") from None
            else:
                conn.execute(update(t.requests).where(t.requests.c.request_id == request.request_id).values(**values))
            self.event(conn, f"request.{state}", request.request_id, reason=reason, version=version)
        return self.get_request(request.request_id)  # type: ignore[return-value]

    def list_requests(self, states: Sequence[str] | None = None, model: str | None = None) -> list[RequestRow]:
        """Overdue requests first, then by deadline (none last), then by the time they were received."""
        q = select(t.requests)
        if states:
            q = q.where(t.requests.c.state.in_(list(states)))
        if model:
            q = q.where(t.requests.c.model == model)
        with self._tx() as conn:
            rows = [RequestRow.of(r) for r in conn.execute(q)]
        now = utcnow()
        far = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
        return sorted(rows, key=lambda r: (not r.overdue(now), r.deadline_at or far, r.received_at, r.request_id))

    def runnable_requests(self, max_attempts: int) -> list[RequestRow]:
        """Pending requests, and failed ones that may be retried, in deadline order."""
        rows = self.list_requests([PENDING, FAILED])
        return [r for r in rows if r.state == PENDING or (r.retryable and r.attempts < max_attempts)]

    def transition(
        self,
        request_ids: Sequence[str],
        state: str,
        conn: Any = None,
        run_id: str | None = None,
        only_from: Sequence[str] | None = None,
        **values: Any,
    ) -> None:
        """Move every request to ``state``, all or none; refuses a move the state machine does not allow.

        ``only_from`` narrows the allowed starting states further, in the same conditional UPDATE
        (``unlearn requests retry`` moves only failed requests back to pending).
        """
        if conn is None:
            with self._tx() as c:
                return self.transition(request_ids, state, c, run_id=run_id, only_from=only_from, **values)
        allowed = _FROM[state] if only_from is None else tuple(s for s in _FROM[state] if s in only_from)
        cond = [t.requests.c.request_id.in_(list(request_ids)), t.requests.c.state.in_(allowed)]
        if run_id is not None and RUNNING in allowed:
            # Only the run that holds a request may move it on (or resume it).
            cond.append(or_(t.requests.c.state != RUNNING, t.requests.c.run_id == run_id))
        now = utcnow()
        values = {"updated_at": now, **values}
        if state == DONE:
            values.setdefault("done_at", now)
        if run_id is not None:
            values["run_id"] = run_id
        res = conn.execute(update(t.requests).where(and_(*cond)).values(state=state, **values))
        if res.rowcount != len(set(request_ids)):
            current = {
                r.request_id: (r.state, r.run_id)
                for r in conn.execute(
                    select(t.requests.c.request_id, t.requests.c.state, t.requests.c.run_id).where(
                        t.requests.c.request_id.in_(list(request_ids))
                    )
                )
            }
            bad = [f"{rid} is {current[rid][0]}" if rid in current else f"{rid} is unknown" for rid in request_ids]
            raise StateError(f"cannot move {', '.join(request_ids)} to {state}: {'; '.join(bad)}")
        for rid in request_ids:
            self.event(conn, f"request.{state}", rid, run_id, **{k: v for k, v in values.items() if k in _EVENT_KEYS})
        return None

    def fail_requests(self, request_ids: Sequence[str], run_id: str | None, error: str, retryable: bool) -> None:
        with self._tx() as conn:
            for rid in request_ids:
                attempts = conn.execute(select(t.requests.c.attempts).where(t.requests.c.request_id == rid)).scalar()
                self.transition(
                    [rid],
                    FAILED,
                    conn,
                    run_id=run_id,
                    attempts=(attempts or 0) + 1,
                    last_error=error[:2000],
                    retryable=retryable,
                )

    def requeue(self, request_ids: Sequence[str], run_id: str | None, error: str) -> None:
        """A run that died is rolled back: its requests wait again, the attempt counted."""
        with self._tx() as conn:
            for rid in request_ids:
                attempts = conn.execute(select(t.requests.c.attempts).where(t.requests.c.request_id == rid)).scalar()
                self.transition([rid], PENDING, conn, run_id=run_id, attempts=(attempts or 0) + 1, last_error=error)

    # ---- runs ------------------------------------------------------------------------------------
    def start_run(
        self,
        run_id: str,
        model: str,
        batch_id: str,
        request_ids: Sequence[str],
        runner: str,
        config: dict,
        parent_version: str,
        dataset_rev: str,
    ) -> RunRow:
        """Create the run and claim its requests in one transaction: all of them, or nothing at all."""
        now = utcnow()
        with self._tx() as conn:
            conn.execute(
                insert(t.runs).values(
                    run_id=run_id,
                    model=model,
                    batch_id=batch_id,
                    request_ids=",".join(sorted(request_ids)),
                    state=RUN_RUNNING,
                    runner=runner,
                    attempt=1,
                    config_json=json.dumps(config, sort_keys=True),
                    steps_json="{}",
                    parent_version=parent_version,
                    dataset_rev=dataset_rev,
                    committing=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            self.transition(request_ids, RUNNING, conn, run_id=run_id)
            self.event(conn, "run.created", run_id=run_id, requests=list(request_ids), runner=runner)
        return self.get_run(run_id)  # type: ignore[return-value]

    def get_run(self, run_id: str) -> RunRow | None:
        with self._tx() as conn:
            row = conn.execute(select(t.runs).where(t.runs.c.run_id == run_id)).first()
        return RunRow.of(row) if row else None

    def run_by_lineage(self, lineage_run_id: str) -> RunRow:
        with self._tx() as conn:
            row = conn.execute(select(t.runs).where(t.runs.c.lineage_run_id == lineage_run_id)).first()
        if row is None:
            raise StateError(f"no compliance run in the state database has MLflow run {lineage_run_id}")
        return RunRow.of(row)

    def runs(self, states: Sequence[str] | None = None, model: str | None = None) -> list[RunRow]:
        q = select(t.runs).order_by(t.runs.c.created_at)
        if states:
            q = q.where(t.runs.c.state.in_(list(states)))
        if model:
            q = q.where(t.runs.c.model == model)
        with self._tx() as conn:
            return [RunRow.of(r) for r in conn.execute(q)]

    def update_run(self, run_id: str, conn: Any = None, **values: Any) -> None:
        if conn is None:
            with self._tx() as c:
                return self.update_run(run_id, c, **values)
        if "steps" in values:
            values["steps_json"] = json.dumps(values.pop("steps"), sort_keys=True)
        if "config" in values:
            values["config_json"] = json.dumps(values.pop("config"), sort_keys=True)
        if values.get("state") in (*RUN_ENDED, RUN_INTERRUPTED):
            values.setdefault("ended_at", utcnow())
        conn.execute(update(t.runs).where(t.runs.c.run_id == run_id).values(updated_at=utcnow(), **values))
        if "state" in values:
            self.event(conn, f"run.{values['state']}", run_id=run_id, error=values.get("error"))
        return None

    def finish_step(self, run_id: str, step: str, outputs: dict, **values: Any) -> None:
        """Record a step's outputs: a resumed run starts after the last finished step."""
        with self._tx() as conn:
            raw = conn.execute(select(t.runs.c.steps_json).where(t.runs.c.run_id == run_id)).scalar()
            steps = json.loads(raw or "{}")
            steps[step] = outputs | {"finished_at": utcnow().isoformat(timespec="seconds")}
            self.update_run(run_id, conn, steps=steps, **values)
            self.event(conn, "step.finished", run_id=run_id, step=step)

    def complete(self, run_id: str, request_ids: Sequence[str], version: str, evidence: dict) -> None:
        """The run's requests are done and the run succeeded: one transaction, so never one without the other."""
        with self._tx() as conn:
            self.transition(
                request_ids,
                DONE,
                conn,
                run_id=run_id,
                version=version,
                evidence_json=json.dumps(evidence, sort_keys=True),
                reason=None,
            )
            self.update_run(run_id, conn, state=RUN_SUCCEEDED, version=version)

    # ---- leases ----------------------------------------------------------------------------------
    def lease(self, name: str) -> LeaseRow | None:
        with self._tx() as conn:
            row = conn.execute(select(t.leases).where(t.leases.c.name == name)).first()
        return LeaseRow.of(row) if row else None

    def acquire_lease(self, name: str, run_id: str, ttl: float, holder: str | None = None) -> LeaseRow:
        """Take the lease for ``run_id``; a lease that expired or whose local holder died is taken over."""
        holder = holder or local_holder()
        now = utcnow()
        expires = now + dt.timedelta(seconds=ttl)
        with self._tx() as conn:
            row = conn.execute(select(t.leases).where(t.leases.c.name == name)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(t.leases).values(
                                name=name, run_id=run_id, holder=holder, acquired_at=now, expires_at=expires
                            )
                        )
                except IntegrityError:
                    raise LeaseBusy(_taken_just_now(conn, name)) from None
                self.event(conn, "lease.acquired", run_id=run_id, lease=name)
                return LeaseRow(name, run_id, holder, now, expires)
            cur = LeaseRow.of(row)
            if cur.run_id != run_id and cur.expires_at > now and not holder_is_dead(cur.holder):
                raise LeaseBusy(_held_by(name, cur))
            res = conn.execute(
                update(t.leases)
                .where(and_(t.leases.c.name == name, t.leases.c.run_id == cur.run_id, t.leases.c.holder == cur.holder))
                .values(run_id=run_id, holder=holder, acquired_at=now, expires_at=expires)
            )
            if res.rowcount != 1:
                raise LeaseBusy(_taken_just_now(conn, name))
            if cur.run_id != run_id:
                self.event(conn, "lease.taken_over", run_id=run_id, lease=name, previous=cur.run_id)
        return LeaseRow(name, run_id, holder, now, expires)

    def renew_lease(self, name: str, run_id: str, ttl: float, holder: str | None = None) -> bool:
        """Extend the lease if ``run_id`` still holds it; False means it was lost to another run."""
        values: dict[str, Any] = {"expires_at": utcnow() + dt.timedelta(seconds=ttl)}
        if holder:
            values["holder"] = holder
        with self._tx() as conn:
            res = conn.execute(
                update(t.leases).where(and_(t.leases.c.name == name, t.leases.c.run_id == run_id)).values(**values)
            )
        return res.rowcount == 1

    def release_lease(self, name: str, run_id: str) -> None:
        from sqlalchemy import delete

        with self._tx() as conn:
            res = conn.execute(delete(t.leases).where(and_(t.leases.c.name == name, t.leases.c.run_id == run_id)))
            if res.rowcount:
                self.event(conn, "lease.released", run_id=run_id, lease=name)


_EVENT_KEYS = ("last_error", "version", "reason", "retryable", "attempts")


def _held_by(name: str, cur: LeaseRow) -> str:
    kind, _, rest = cur.holder.partition(":")
    where = ":".join(rest.split(":")[:2])
    return f"{name} is held by run {cur.run_id} ({kind} {where}) until {cur.expires_at:%Y-%m-%d %H:%M:%S} UTC"


def _taken_just_now(conn: Any, name: str) -> str:
    # Another process wrote the lease between our read and our write: name the run that has it,
    # as when it was already held (the caller tells its user who is on the model).
    row = conn.execute(select(t.leases).where(t.leases.c.name == name)).first()
    return _held_by(name, LeaseRow.of(row)) if row else f"{name} was taken by another run just now"


def model_lease(model: str) -> str:
    return f"model:{model}"


@dataclass
class Heartbeat:
    """Keeps a lease alive from a background thread while a run (or one of its steps) works."""

    store: StateStore
    name: str
    run_id: str
    ttl: float
    holder: str | None = None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        # Four beats per TTL, however short: a floor above the TTL would let the lease lapse between beats.
        interval = self.ttl / 4
        while not self._stop.wait(interval):
            try:
                if not self.store.renew_lease(self.name, self.run_id, self.ttl, self.holder):
                    self.lost = True
                    return
            except (StateError, SQLAlchemyError):
                continue  # a passing database fault: the next beat tries again before expiry

    def __enter__(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._loop, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
