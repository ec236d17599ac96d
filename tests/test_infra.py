"""Deployment files agree with the code (the Kubernetes manifests: tests/infra/test_manifests.py)."""

from __future__ import annotations

from pathlib import Path

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_dockerfile_pins_torch_like_the_constraints():
    text = (INFRA / "Dockerfile").read_text()
    constraints = (INFRA.parent / "requirements" / "constraints.txt").read_text()
    pin = next(line for line in constraints.splitlines() if line.startswith("torch=="))
    assert pin in text

