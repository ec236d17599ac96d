"""A file-backed queue of deletion requests: pending, done (with evidence), and attempts.

Lives in the workspace (``requests/``). A request moves to ``done`` only once a model
version without its data is in production; a failed attempt is recorded beside it and the
request stays pending.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import defaultdict
from pathlib import Path

from ..utils import write_json
from .schema import DeletionBatch, DeletionRequest, RequestError, load_request


class RequestQueue:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        for sub in ("pending", "done", "attempts"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _path(self, state: str, request_id: str) -> Path:
        return self.root / state / f"{request_id}.json"

    def submit(self, request: DeletionRequest) -> Path:
        if self.is_done(request.request_id):
            raise RequestError(f"request {request.request_id} was already fulfilled")
        path = self._path("pending", request.request_id)
        if path.exists():
            raise RequestError(f"request {request.request_id} is already pending")
        write_json(path, request.to_dict())
        return path

    def pending(self) -> list[DeletionRequest]:
        return [load_request(p) for p in sorted((self.root / "pending").glob("*.json"))]

    def is_done(self, request_id: str) -> bool:
        return self._path("done", request_id).exists()

    def done_evidence(self, request_id: str) -> dict | None:
        p = self._path("done", request_id)
        return json.loads(p.read_text()) if p.exists() else None

    def mark_done(self, request: DeletionRequest, evidence: dict) -> None:
        write_json(
            self._path("done", request.request_id),
            {
                "request": request.to_dict(),
                "evidence": evidence,
                "completed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            },
        )
        self._path("pending", request.request_id).unlink(missing_ok=True)

    def record_attempt(self, request_id: str, evidence: dict) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        write_json(self.root / "attempts" / f"{request_id}-{stamp}.json", evidence)

    def batches(self, max_requests: int = 50) -> list[DeletionBatch]:
        """Group pending requests by model and kind (class erasures apart from record deletions)."""
        groups: dict[tuple[str, bool], list[DeletionRequest]] = defaultdict(list)
        for r in self.pending():
            groups[(r.model, r.targets.scope == "class")].append(r)
        out = []
        for _, reqs in sorted(groups.items()):
            for i in range(0, len(reqs), max_requests):
                out.append(DeletionBatch(tuple(reqs[i : i + max_requests])))
        return out
