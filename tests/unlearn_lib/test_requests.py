"""Deletion requests: validation with the failing field named, batching, the queue."""

from __future__ import annotations

import json

import pytest

from unlearn_lib.requests import DeletionBatch, RequestQueue, load_request, parse_request
from unlearn_lib.requests.schema import RequestError

GOOD = {
    "request_id": "REQ-1",
    "received_at": "2026-11-27T10:00:00Z",
    "basis": "gdpr-art17",
    "model": "digits-diffusion",
    "targets": {"subject_ids": ["subject-canary"]},
    "deadline": "2026-12-27",
}


def test_parse_good_request():
    req = parse_request(GOOD)
    assert req.targets.subject_ids == ("subject-canary",) and req.targets.scope == "records"
    assert parse_request(json.loads(req.to_json())) == req


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"request_id": "bad id!"}, "request_id must be"),
        ({"basis": "because"}, "basis must be one of"),
        ({"received_at": "yesterday"}, "received_at 'yesterday' is not an ISO-8601"),
        ({"targets": {}}, "targets name nothing"),
        ({"targets": {"subjects": ["x"]}}, "unknown target\\(s\\) subjects"),
        ({"targets": {"labels": ["3"]}}, "targets.labels must be a list of integers"),
        ({"targets": {"record_ids": "r1"}}, "targets.record_ids must be a list"),
        ({"model": ""}, "model must name a registered model"),
        ({"schema_version": 7}, "unknown schema_version 7"),
        ({"colour": "red"}, "unexpected field\\(s\\) colour"),
    ],
)
def test_malformed_requests_are_refused_with_the_field_named(change, message):
    with pytest.raises(RequestError, match=message):
        parse_request(GOOD | change)


def test_missing_fields_and_files(tmp_path):
    with pytest.raises(RequestError, match="missing field\\(s\\) basis, model"):
        parse_request({k: v for k, v in GOOD.items() if k not in ("basis", "model")})
    with pytest.raises(RequestError, match="does not exist"):
        load_request(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RequestError, match="not valid JSON"):
        load_request(tmp_path / "bad.json")


def test_batch_merges_targets_and_refuses_mixtures():
    a = parse_request(GOOD)
    b = parse_request(
        GOOD | {"request_id": "REQ-2", "targets": {"record_ids": ["digits-0001"], "caption_pattern": "seven"}}
    )
    batch = DeletionBatch((a, b))
    assert batch.targets.subject_ids == ("subject-canary",) and batch.targets.record_ids == ("digits-0001",)
    assert batch.batch_id.startswith("batch-") and DeletionBatch.from_json(batch.to_json()) == batch
    with pytest.raises(RequestError, match="one model"):
        DeletionBatch((a, parse_request(GOOD | {"request_id": "REQ-3", "model": "other"})))
    with pytest.raises(RequestError, match="separate batches"):
        DeletionBatch((a, parse_request(GOOD | {"request_id": "REQ-4", "targets": {"labels": [3]}})))
    with pytest.raises(RequestError, match="same request twice"):
        DeletionBatch((a, a))


def test_queue_lifecycle(tmp_path):
    q = RequestQueue(tmp_path)
    a = parse_request(GOOD)
    c = parse_request(GOOD | {"request_id": "REQ-C", "targets": {"labels": [3]}})
    q.submit(a)
    q.submit(c)
    with pytest.raises(RequestError, match="already pending"):
        q.submit(a)
    batches = q.batches()
    assert [b.request_ids for b in batches] == [["REQ-1"], ["REQ-C"]]  # class erasures run apart
    q.mark_done(a, {"version": "2"})
    assert q.is_done("REQ-1") and [r.request_id for r in q.pending()] == ["REQ-C"]
    with pytest.raises(RequestError, match="already fulfilled"):
        q.submit(a)
