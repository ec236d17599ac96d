"""MLflow lineage helpers on a real (SQLite-backed) tracking store."""

from __future__ import annotations

import mlflow
import pytest

from unlearn_lib.errors import ModelError
from unlearn_lib.settings import Settings
from unlearn_lib.tracking import (
    client_for,
    configure,
    production_version,
    promote,
    register_version,
    start_pipeline_run,
    step_run,
)


def test_step_runs_nest_under_the_parent_and_fail_with_the_error(tmp_path):
    settings = Settings(workspace=str(tmp_path))
    parent = start_pipeline_run(settings, "p", {"request_ids": "R1"}, {"k": "v"})
    with step_run(settings, parent, "extract_forget_set"):
        mlflow.log_metric("m", 1.0)
    with pytest.raises(ValueError), step_run(settings, parent, "unlearn"):
        raise ValueError("boom")
    client = client_for(settings)
    exp = client.get_experiment_by_name(settings.mlflow_experiment)
    kids = {
        r.data.tags["unlearn.step"]: r
        for r in client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    }
    assert kids["extract_forget_set"].info.status == "FINISHED"
    assert kids["unlearn"].info.status == "FAILED" and kids["unlearn"].data.tags["unlearn.error"] == "ValueError: boom"
    assert client.get_run(parent).data.tags["unlearn.request_ids"] == "R1"


def test_an_injected_mlflow_run_id_is_honoured(tmp_path, monkeypatch):
    settings = Settings(workspace=str(tmp_path))
    configure(settings)
    injected = (
        client_for(settings)
        .create_run(client_for(settings).get_experiment_by_name(settings.mlflow_experiment).experiment_id)
        .info.run_id
    )
    monkeypatch.setenv("MLFLOW_RUN_ID", injected)
    with step_run(settings, "ignored-parent", "audit"):
        mlflow.log_metric("audit.passed", 1.0)
    run = client_for(settings).get_run(injected)
    assert run.data.metrics["audit.passed"] == 1.0 and run.data.tags["unlearn.step"] == "audit"


def test_production_version_refuses_unknown_models(tmp_path):
    settings = Settings(workspace=str(tmp_path))
    client = configure(settings)
    with pytest.raises(ModelError, match="registered model 'nope' does not exist"):
        production_version(client, "nope")
    client.create_registered_model("empty")
    with pytest.raises(ModelError, match="has no version with alias 'production'"):
        production_version(client, "empty")


def test_promotion_moves_production_only_on_pass_and_clears_a_stale_candidate(tmp_path):
    settings = Settings(workspace=str(tmp_path))
    client = configure(settings)
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "model/unet.txt")
    v1, v2 = (register_version(client, "m", run.info.run_id, {"request_ids": ""}).version for _ in range(2))
    assert promote(client, "m", v1, passed=True) == "production"  # no candidate alias yet
    assert promote(client, "m", v2, passed=False) == "candidate"
    assert production_version(client, "m").version == v1
    assert promote(client, "m", v2, passed=True) == "production"  # a re-audit that passes
    assert production_version(client, "m").version == v2
    assert "candidate" not in client.get_registered_model("m").aliases


def test_the_lineage_root_is_the_first_version_of_the_parent_chain(tmp_path):
    from unlearn_lib.tracking.registry import lineage_root

    client = configure(Settings(workspace=str(tmp_path)))
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "model/unet.txt")
    v1 = register_version(client, "m", run.info.run_id, {"kind": "base"}).version
    v2 = register_version(client, "m", run.info.run_id, {"parent_version": v1}).version
    v3 = register_version(client, "m", run.info.run_id, {"parent_version": v2}).version
    # A base registered later starts a lineage of its own.
    v4 = register_version(client, "m", run.info.run_id, {"kind": "base"}).version
    assert str(lineage_root(client, "m", v3).version) == str(v1)
    assert str(lineage_root(client, "m", v1).version) == str(v1)
    assert str(lineage_root(client, "m", v4).version) == str(v4)
    # A chain that names a deleted version, or loops, ends where it breaks.
    v5 = register_version(client, "m", run.info.run_id, {"parent_version": "99"}).version
    assert str(lineage_root(client, "m", v5).version) == str(v5)
    client.set_model_version_tag("m", v1, "unlearn.parent_version", v3)
    assert str(lineage_root(client, "m", v3).version) in {str(v1), str(v2), str(v3)}
