"""claim_pending: its interface, and the component's function against a real state database."""

from __future__ import annotations

from kfp import compiler

from components import IMAGE
from components.claim_pending import claim_pending
from unlearn_lib.requests import parse_request
from unlearn_lib.settings import Settings
from unlearn_lib.state import FAILED, PENDING, StateStore


def test_interface(tmp_path):
    spec = claim_pending.component_spec
    assert set(spec.inputs) == {"settings", "max_batch", "algorithm", "options", "audit_params", "queue_seconds"}
    assert spec.inputs["settings"].type == "Dict" and spec.inputs["max_batch"].type == "Integer"
    assert spec.outputs["Output"].type == "List"
    assert spec.implementation.container.image == IMAGE
    compiler.Compiler().compile(claim_pending, str(tmp_path / "c.yaml"))


def test_an_empty_queue_launches_nothing(tmp_path):
    settings = Settings(workspace=str(tmp_path))
    assert claim_pending.python_func(settings.for_steps(), 50, "erasediff", {}, {}, 3600) == []
    assert StateStore.open(settings).runs() == []


def test_a_request_whose_model_is_gone_fails_and_is_not_retried(tmp_path):
    # Re-checked against the world before it is claimed: the model is not in the registry (any more).
    settings = Settings(workspace=str(tmp_path))
    store = StateStore.open(settings)
    store.add_request(
        parse_request(
            {
                "request_id": "REQ-GONE",
                "received_at": "2026-11-20T10:00:00Z",
                "basis": "gdpr-art17",
                "model": "no-such-model",
                "targets": {"labels": [3]},
            }
        ),
        PENDING,
    )
    assert claim_pending.python_func(settings.for_steps(), 50, "erasediff", {}, {}, 3600) == []
    row = store.get_request("REQ-GONE")
    assert (row.state, row.retryable) == (FAILED, False)
    assert row.last_error.startswith("no longer valid: registered model 'no-such-model' does not exist")
