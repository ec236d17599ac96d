"""A stand-in for a Kubeflow Pipelines API server: the few v2beta1 REST endpoints `kfp.Client` calls.

A Kubernetes cluster with KFP cannot run here, so this small HTTP server (stdlib, a thread on
127.0.0.1) answers the calls `unlearn schedule ...` and `unlearn pipeline submit --wait` make,
through the real kfp client and its generated REST layer: healthz; pipelines upload, list, get
and their versions; experiments; recurring runs create, list, get, delete; runs create and get.
It records every request (method, path, query, JSON or uploaded file) for the tests to check,
and plays a run's life: ``RUNNING`` first, then the end a test scripts, with a hook standing
in for what the cluster's steps would have written meanwhile.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"
CREATED_AT = "2026-11-30T02:00:00Z"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any = None  # parsed JSON
    upload: bytes | None = None  # the file of a multipart upload


@dataclass
class FakeKfp:
    """The server's state; ``url`` once started."""

    calls: list[Call] = field(default_factory=list)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    experiments: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    # How a created run ends: its final state after one RUNNING poll, and what "the cluster" did.
    final_state: str | None = None
    run_error: str | None = None
    cluster: Callable[[dict], None] | None = None
    url: str = ""
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> FakeKfp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # the tests read `calls`, not a log
                pass

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                call = Call(self.command, parts.path, query)
                ctype = self.headers.get("Content-Type") or ""
                if ctype.startswith("multipart/form-data"):
                    call.upload = _uploaded_file(ctype, raw)
                elif raw:
                    call.body = json.loads(raw)
                with fake._lock:
                    fake.calls.append(call)
                    status, payload = fake.handle(call)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="fake-kfp", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---- what the tests read ------------------------------------------------------------------------
    def sent(self, method: str, path: str) -> list[Call]:
        """The requests to ``path`` (after /apis/v2beta1) by ``method``."""
        return [c for c in self.calls if c.method == method and c.path == API + path]

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.method in ("POST", "DELETE", "PATCH", "PUT")]

    # ---- the API ------------------------------------------------------------------------------------
    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def handle(self, call: Call) -> tuple[int, Any]:
        path = call.path.removeprefix(API)
        if not call.path.startswith(API):
            return _error(404, f"no route {call.path}")
        route = (call.method, *[p for p in path.split("/") if p])
        match route:
            case ("GET", "healthz"):
                return 200, {"multi_user": False}
            case ("POST", "pipelines", "upload"):
                return self._upload(call)
            case ("POST", "pipelines", "upload_version"):
                return self._upload_version(call, call.query.get("pipelineid", ""), call.query.get("name", ""))
            case ("GET", "pipelines"):
                return 200, _page("pipelines", _filtered(self.pipelines.values(), call.query))
            case ("GET", "pipelines", pid):
                return (200, self.pipelines[pid]) if pid in self.pipelines else _error(404, f"no pipeline {pid}")
            case ("GET", "pipelines", pid, "versions"):
                mine = [v for v in self.versions.values() if v["pipeline_id"] == pid]
                return 200, _page("pipeline_versions", _filtered(mine, call.query))
            case ("GET", "pipelines", pid, "versions", vid):
                v = self.versions.get(vid)
                return (200, v) if v and v["pipeline_id"] == pid else _error(404, f"no pipeline version {vid}")
            case ("GET", "experiments"):
                return 200, _page("experiments", _filtered(self.experiments.values(), call.query))
            case ("POST", "experiments"):
                exp = dict(call.body) | {"experiment_id": self._id("exp"), "created_at": CREATED_AT}
                exp["storage_state"] = "AVAILABLE"
                self.experiments[exp["experiment_id"]] = exp
                return 200, exp
            case ("GET", "experiments", eid):
                return (200, self.experiments[eid]) if eid in self.experiments else _error(404, f"no experiment {eid}")
            case ("POST", "recurringruns"):
                rr = dict(call.body) | {"recurring_run_id": self._id("rr"), "created_at": CREATED_AT}
                rr["status"] = "ENABLED" if rr.get("mode") == "ENABLE" else "DISABLED"
                self.recurring_runs[rr["recurring_run_id"]] = rr
                return 200, rr
            case ("GET", "recurringruns"):
                found = [
                    r
                    for r in self.recurring_runs.values()
                    if "experiment_id" not in call.query or r.get("experiment_id") == call.query["experiment_id"]
                ]
                return 200, _page("recurringRuns", found)
            case ("GET", "recurringruns", rid):
                rr = self.recurring_runs.get(rid)
                return (200, rr) if rr else _error(404, f"recurring run {rid} not found")
            case ("DELETE", "recurringruns", rid):
                if self.recurring_runs.pop(rid, None) is None:
                    return _error(404, f"recurring run {rid} not found")
                return 200, {}
            case ("POST", "runs"):
                run = dict(call.body) | {"run_id": self._id("run"), "created_at": CREATED_AT, "state": "PENDING"}
                run["polls"] = 0
                self.runs[run["run_id"]] = run
                return 200, _public_run(run)
            case ("GET", "runs", rid):
                return self._poll(rid)
        return _error(404, f"no route {call.method} {call.path}")

    def _upload(self, call: Call) -> tuple[int, Any]:
        name = call.query.get("name") or call.query.get("display_name") or "pipeline"
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return _error(409, f"pipeline {name} already exists")
        pid = self._id("pipeline")
        self.pipelines[pid] = {
            "pipeline_id": pid,
            "display_name": name,
            "name": name,
            "description": call.query.get("description", ""),
            "created_at": CREATED_AT,
        }
        # As KFP does: an uploaded pipeline gets a first version of the same name.
        self._upload_version(call, pid, name)
        return 200, self.pipelines[pid]

    def _upload_version(self, call: Call, pid: str, name: str) -> tuple[int, Any]:
        if pid not in self.pipelines:
            return _error(404, f"no pipeline {pid}")
        if any(v["pipeline_id"] == pid and v["display_name"] == name for v in self.versions.values()):
            return _error(409, f"pipeline version {name} already exists")
        vid = self._id("version")
        self.versions[vid] = {
            "pipeline_id": pid,
            "pipeline_version_id": vid,
            "display_name": name,
            "name": name,
            "created_at": CREATED_AT,
            "pipeline_spec": _first_document(call.upload or b""),
        }
        return 200, self.versions[vid]

    def _poll(self, rid: str) -> tuple[int, Any]:
        run = self.runs.get(rid)
        if run is None:
            return _error(404, f"run {rid} not found")
        run["polls"] += 1
        if run["state"] not in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"):
            if run["polls"] == 1 or self.final_state is None:
                run["state"] = "RUNNING"
            else:
                if self.cluster is not None:
                    self.cluster(run["runtime_config"]["parameters"])
                run["state"] = self.final_state
                run["finished_at"] = CREATED_AT
                if self.run_error:
                    run["error"] = {"code": 2, "message": self.run_error}
        return 200, _public_run(run)


def _public_run(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "polls"}


def _error(status: int, message: str) -> tuple[int, Any]:
    return status, {"error": message, "code": 5 if status == 404 else 2, "message": message, "details": []}


def _page(key: str, items: Any) -> dict:
    # ``key`` as kfp_server_api reads it: snake_case, except recurring runs ("recurringRuns").
    items = list(items)
    return {key: items, "total_size": len(items), "next_page_token": ""}


def _filtered(items: Any, query: dict[str, str]) -> list[dict]:
    """The EQUALS predicates on display_name that kfp's helpers send (get_pipeline_id, get_experiment)."""
    items = list(items)
    if "filter" not in query:
        return items
    for pred in json.loads(query["filter"]).get("predicates", []):
        key = pred.get("key")
        value = pred.get("stringValue", pred.get("string_value"))
        if pred.get("operation") not in ("EQUALS", 1) or key not in ("display_name", "name"):
            raise AssertionError(f"the fake does not filter by {pred}")
        items = [i for i in items if i.get("display_name") == value]
    return items


def _uploaded_file(content_type: str, raw: bytes) -> bytes:
    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "uploadfile":
            return part.get_payload(decode=True)
    raise AssertionError("multipart upload without an uploadfile part")


def _first_document(data: bytes) -> dict:
    docs = list(yaml.safe_load_all(data.decode())) if data else []
    return docs[0] if docs else {}
