"""Kubeflow (kfp 2.x) components of the compliance pipeline, one folder each.

Every component is a thin wrapper over ``unlearn_lib.compliance``: parse inputs, call the
library, write typed outputs. They run in the project image (``infra/Dockerfile``) on a
cluster and in the current environment under ``kfp.local``.
"""

import os

# The image built from infra/Dockerfile; override at compile time for your registry.
IMAGE = os.environ.get("UNLEARN_PIPELINE_IMAGE", "ghcr.io/unlearn/unlearn:0.1.0")
