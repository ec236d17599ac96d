"""Deletion requests: validation with the failing field named, batching, the queue."""

from __future__ import annotations

import json

import pytest

from unlearn_lib.requests import DeletionBatch, load_request, parse_request
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


def _refused(data, where="req.json"):
    with pytest.raises(RequestError) as err:
        parse_request(data, where=where)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{where}: ")
    return message


def test_to_dict_format_is_unchanged():
    req = parse_request(GOOD | {"targets": {"record_ids": ["r1", "r1", "r2"], "labels": [], "caption_pattern": None}})
    assert req.to_dict() == {
        "request_id": "REQ-1",
        "received_at": "2026-11-27T10:00:00Z",
        "basis": "gdpr-art17",
        "model": "digits-diffusion",
        "targets": {"record_ids": ["r1", "r2"]},
        "deadline": "2026-12-27",
        "schema_version": 1,
    }
    assert json.loads(req.to_json()) == req.to_dict()


@pytest.mark.parametrize("rid", ["REQ-1\n", "REQ 1", "-REQ", ".hidden", "", "x" * 129, "REQ/1"])
def test_request_id_is_matched_in_full(rid):
    assert "request_id" in _refused(GOOD | {"request_id": rid})


def test_request_id_limits():
    assert parse_request(GOOD | {"request_id": "A" + "x" * 127}).request_id == "A" + "x" * 127
    assert parse_request(GOOD | {"request_id": "9.a_b-c"}).request_id == "9.a_b-c"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "digits\x00diffusion"}, "model contains a control character (U+0000)"),
        ({"received_at": "2026-11-27\t"}, "received_at contains a control character (U+0009)"),
        ({"deadline": "2026-12-27\x7f"}, "deadline contains a control character (U+007F)"),
        ({"targets": {"record_ids": ["ok", "bad\rid"]}}, "targets.record_ids[1] contains a control character"),
        ({"targets": {"subject_ids": ["s\x1b[31m"]}}, "targets.subject_ids[0] contains a control character (U+001B)"),
        ({"targets": {"caption_pattern": "seven\n"}}, "targets.caption_pattern contains a control character"),
    ],
)
def test_control_characters_are_refused_with_the_field_named(change, field):
    assert field in _refused(GOOD | change)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"record_ids": [""]}, "targets.record_ids[0] must be a non-empty string"),
        ({"subject_ids": ["s" * 257]}, "targets.subject_ids[0] is 257 characters; at most 256"),
        ({"record_ids": [f"r{i}" for i in range(100_001)]}, "targets.record_ids has 100001 entries; at most 100000"),
        ({"record_ids": [7]}, "targets.record_ids must be a list of non-empty strings"),
        ({"labels": [True]}, "targets.labels must be a list of integers"),
        ({"labels": [3.0]}, "targets.labels must be a list of integers"),
        ({"labels": [-1]}, "targets.labels[0] must be between 0 and 100000, got -1"),
        ({"labels": [1, 100_001]}, "targets.labels[1] must be between 0 and 100000, got 100001"),
        ({"caption_pattern": "(seven"}, "targets.caption_pattern is not a valid regular expression (missing ), "),
        ({"caption_pattern": "a" * 1001}, "targets.caption_pattern is 1001 characters; at most 1000"),
        ({"caption_pattern": ""}, "targets.caption_pattern must be a non-empty string"),
        ({"caption_pattern": 7}, "targets.caption_pattern must be a non-empty string"),
        ({"a": [1], "b": 2}, "unknown target(s) a, b (known: record_ids, subject_ids, labels, caption_pattern)"),
        ([], "targets must be an object with any of record_ids"),
    ],
)
def test_target_limits(targets, message):
    assert message in _refused(GOOD | {"targets": targets})


def test_target_limits_accept_the_edges():
    req = parse_request(
        GOOD
        | {
            "targets": {
                "record_ids": ["r" * 256],
                "labels": [0, 100_000],
                "caption_pattern": "x" * 1000,
            }
        }
    )
    assert req.targets.labels == (0, 100_000) and len(req.targets.record_ids[0]) == 256


def test_timestamps_become_utc_datetimes():
    import datetime as dt

    utc = dt.timezone.utc
    req = parse_request(GOOD)
    assert req.received_dt == dt.datetime(2026, 11, 27, 10, 0, tzinfo=utc)
    assert req.deadline_dt == dt.datetime(2026, 12, 27, 23, 59, 59, tzinfo=utc)  # a date: its last second
    naive = parse_request(GOOD | {"received_at": "2026-11-27T10:00:00", "deadline": "2026-12-01T12:00:00+02:00"})
    assert naive.received_dt == dt.datetime(2026, 11, 27, 10, 0, tzinfo=utc)
    assert naive.deadline_dt == dt.datetime(2026, 12, 1, 10, 0, tzinfo=utc)
    assert naive.received_at == "2026-11-27T10:00:00" and naive.deadline == "2026-12-01T12:00:00+02:00"
    no_deadline = parse_request({k: v for k, v in GOOD.items() if k != "deadline"})
    assert no_deadline.deadline is None and no_deadline.deadline_dt is None
    assert parse_request(GOOD | {"received_at": "2026-11-27"}).received_dt == dt.datetime(2026, 11, 27, tzinfo=utc)


def test_deadline_before_receipt_is_refused():
    message = _refused(GOOD | {"deadline": "2026-11-26"})
    assert message == "req.json: deadline '2026-11-26' is before received_at '2026-11-27T10:00:00Z'"
    # The same day is fine: a bare date means its end.
    assert parse_request(GOOD | {"deadline": "2026-11-27"}).deadline == "2026-11-27"
    assert "is not an ISO-8601" in _refused(GOOD | {"deadline": "next week"})
    assert "deadline must be an ISO-8601 date or timestamp string" in _refused(GOOD | {"deadline": 20261227})


def test_requests_built_in_code_fail_in_one_line():
    from unlearn_lib.data.selection import ForgetTargets
    from unlearn_lib.requests import DeletionRequest

    ok = DeletionRequest(
        request_id="R", received_at="2026-01-01", basis="ccpa", model="m", targets=ForgetTargets.build(labels=[3])
    )
    assert ok.targets.labels == (3,)
    with pytest.raises(RequestError, match="^request: targets.labels\\[0\\] must be between"):
        DeletionRequest(
            request_id="R", received_at="2026-01-01", basis="ccpa", model="m", targets=ForgetTargets.build(labels=[-3])
        )


def test_bytes_are_bounded_before_parsing():
    from unlearn_lib.requests.schema import parse_request_bytes

    good = json.dumps(GOOD).encode()
    assert parse_request_bytes(good, "req.json") == parse_request(GOOD)
    assert parse_request_bytes(b"\xef\xbb\xbf" + good, "req.json") == parse_request(GOOD)  # a BOM is not data

    def refused(raw):
        with pytest.raises(RequestError) as err:
            parse_request_bytes(raw, "req.json")
        assert "\n" not in str(err.value)
        return str(err.value)

    assert refused(b" " * (4 << 20)) == "req.json is 4.0 MiB; a request may be at most 1 MiB"
    assert refused(b" " * ((1 << 20) + 1)) == "req.json is 1048577 bytes; a request may be at most 1 MiB"
    assert refused(b'{"request_id"\xff: 1}') == "req.json is not UTF-8 text (invalid byte 0xff at offset 13)"
    assert (
        refused(b'{"model": "x",\n"basis" "ccpa"}')
        == "req.json: not valid JSON (Expecting ':' delimiter at line 2, column 9)"
    )
    assert refused(b"[" * 100_000) == "req.json: not valid JSON (nested deeper than 32 levels)"
    assert refused(b'{"a":' * 50_000) == "req.json: not valid JSON (nested deeper than 32 levels)"
    assert refused(b'{"request_id": "A", "request_id": "B"}') == "req.json: not valid JSON (duplicate key 'request_id')"
    assert refused(b'{"targets": {"labels": [NaN]}}') == "req.json: not valid JSON (NaN is not JSON)"
    # 32 levels pass the depth check (and fail as a request); brackets inside strings do not count.
    assert refused(b"[" * 32 + b"]" * 32) == "req.json: a deletion request must be a JSON object"
    deep_string = json.dumps(GOOD | {"model": "[" * 100}).encode()
    assert parse_request_bytes(deep_string, "req.json").model == "[" * 100


def test_invalid_utf8_offset_is_reported():
    from unlearn_lib.requests.schema import parse_request_bytes

    with pytest.raises(RequestError, match=r"^r\.json is not UTF-8 text \(invalid byte 0xff at offset 12\)$"):
        parse_request_bytes(b'{"model": "a\xff"}', "r.json")


def test_load_request_reads_bounded_bytes(tmp_path):
    good = tmp_path / "good.json"
    good.write_bytes(json.dumps(GOOD).encode())
    assert load_request(good) == parse_request(GOOD)
    with pytest.raises(RequestError, match=f"^request file {tmp_path} is a directory$"):
        load_request(tmp_path)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (4 << 20))
    with pytest.raises(RequestError, match=f"^{big} is 4.0 MiB; a request may be at most 1 MiB$"):
        load_request(big)
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps(GOOD | {"model": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(RequestError, match="is not UTF-8 text \\(invalid byte 0xe9 at offset"):
        load_request(latin)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(GOOD | {"basis": "whim"}))
    with pytest.raises(RequestError) as err:
        load_request(bad)
    assert (
        str(err.value)
        == f"{bad}: basis must be one of gdpr-art17, ccpa, copyright, safety, contract, other, got 'whim'"
    )


def test_batch_json_is_depth_checked():
    with pytest.raises(RequestError, match="^batch: not valid JSON \\(nested deeper than 32 levels\\)$"):
        DeletionBatch.from_json("[" * 100_000)
    with pytest.raises(RequestError, match="^batch: not valid JSON"):
        DeletionBatch.from_json("{nope")
