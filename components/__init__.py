"""Kubeflow (kfp 2.x) components of the compliance pipeline, one folder each.

Every component is a thin wrapper over ``unlearn_lib.compliance``: parse inputs, call the
library, write typed outputs. They run in the project image (``infra/Dockerfile``) on a
cluster and in the current environment under ``kfp.local``.
"""

import os

from unlearn_lib.settings import default_image

# The image built from infra/Dockerfile, tagged with the package version. A build's digest is
# put in at compile time (`unlearn pipeline compile --image REPO@sha256:...`, setting
# pipeline_image) or at run time by the container runner.
IMAGE = os.environ.get("UNLEARN_PIPELINE_IMAGE") or default_image()
