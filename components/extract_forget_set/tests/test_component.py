"""extract_forget_set: its interface, and a standalone kfp.local run on a real workspace."""

from __future__ import annotations

import json

from kfp import compiler, local

from components import IMAGE
from components.extract_forget_set import extract_forget_set


def test_interface(tmp_path):
    spec = extract_forget_set.component_spec
    assert set(spec.inputs) == {"run_id", "settings", "dataset_rev", "kfp_run_id"}
    assert spec.inputs["settings"].type == "Dict" and spec.inputs["run_id"].type == "String"
    assert {k: v.type for k, v in spec.outputs.items() if v.type.startswith("system.")} == {
        k: "system.Dataset@0.0.1" for k in ("forget", "retain", "holdout", "purged")
    }
    assert {"dataset_rev", "purged_rev", "forget_set_sha256", "scope"} <= set(spec.outputs)
    assert spec.implementation.container.image == IMAGE
    compiler.Compiler().compile(extract_forget_set, str(tmp_path / "c.yaml"))


def test_local_run_selects_and_prepares_the_purge_on_the_run_ref(workspace):
    from pipelines.run import ensure_base_registered, launch
    from unlearn_lib.requests import DeletionBatch, parse_request
    from unlearn_lib.settings import Settings
    from unlearn_lib.state import StateStore
    from unlearn_lib.workspace import Workspace, run_ref

    settings = Settings(workspace=str(workspace))
    ws = Workspace(workspace)
    ensure_base_registered(settings, ws)
    before = ws.head()
    batch = DeletionBatch(
        (
            parse_request(
                {
                    "request_id": "REQ-E",
                    "received_at": "2026-11-27",
                    "basis": "ccpa",
                    "model": "digits-diffusion",
                    "targets": {"subject_ids": ["subject-canary"]},
                }
            ),
        )
    )
    # The run row, the lease and the MLflow parent run a pipeline run would start with.
    started = launch(settings, batch, "HEAD", "erasediff", {}, {}, runner="kfp.local")
    args = started.arguments
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workspace / "runs" / "kfp"))
    task = extract_forget_set(
        run_id=args["run_id"], settings=args["settings"], dataset_rev="HEAD", kfp_run_id="kfp-local-1"
    )
    purged = task.outputs["purged_rev"]
    assert task.outputs["dataset_rev"] == before and purged != before
    # Prepared, not served: main and the working tree stay where they were until register publishes.
    assert ws.head() == ws.served() == before and ws.ref_sha(run_ref(started.run_id)) == purged
    forget = json.loads((__import__("pathlib").Path(task.outputs["forget"].path) / "selection.json").read_text())
    assert forget["records"] == 120 and forget["forget_set_sha256"] == task.outputs["forget_set_sha256"]
    assert all(rid.startswith("canary-") for rid in forget["record_ids"])
    assert task.outputs["scope"] == "records"
    run = StateStore.open(settings).get_run(started.run_id)
    assert run.purged_rev == purged and "extract_forget_set" in run.steps
    # The Kubeflow run is recorded on the MLflow parent run.
    from unlearn_lib.tracking import client_for

    assert client_for(settings).get_run(run.lineage_run_id).data.tags["kfp.run_id"] == "kfp-local-1"
