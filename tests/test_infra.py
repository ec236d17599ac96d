"""Deployment files parse and agree with the code (no cluster here: that is all that can be checked)."""

from __future__ import annotations

from pathlib import Path

import yaml

from components import IMAGE

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_manifests_parse_and_use_the_project_image():
    docs = [d for p in sorted((INFRA / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "CronJob", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    images = {c["image"] for d in docs for c in _containers(d)}
    assert IMAGE in images
    for d in docs:
        for c in _containers(d):
            for env in c.get("env", []):
                assert "SECRET" not in env["name"] or "valueFrom" in env, "credentials must come from secrets"


def test_dockerfile_pins_torch_like_the_constraints():
    text = (INFRA / "Dockerfile").read_text()
    constraints = (INFRA.parent / "requirements" / "constraints.txt").read_text()
    pin = next(line for line in constraints.splitlines() if line.startswith("torch=="))
    assert pin in text


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec.get("template", {}).get("spec", {}).get("containers", [])
