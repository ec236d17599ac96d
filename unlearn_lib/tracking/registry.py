"""Model registry helpers around ``models:/NAME@alias``.

``production`` is what serves; ``candidate`` is an audited version that did not (or not
yet) pass. The production alias moves only when every audit gate passes; the previous
version stays registered, so rolling back is moving the alias back.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .lineage import TAG_PREFIX

PRODUCTION = "production"
CANDIDATE = "candidate"
MODEL_ARTIFACT = "model"


def production_version(client: Any, name: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ModelError(f"registered model {name!r} does not exist in the MLflow registry") from None
    try:
        return client.get_model_version_by_alias(name, PRODUCTION)
    except MlflowException:
        raise ModelError(f"registered model {name!r} has no version with alias {PRODUCTION!r}") from None


def download_version(client: Any, name: str, version: str | int, dest: str | os.PathLike[str]) -> Path:
    """Download a model version's diffusers folder into ``dest`` (replaced if present).

    Two layouts are registered: versions logged as an MLflow Model (``log_model_folder``) hold the
    folder as a pyfunc artifact, older ones are the plain folder. Either way ``dest`` is the folder.
    """
    import mlflow

    from .pyfunc import model_folder_in

    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tags = client.get_model_version(name, str(version)).tags or {}
    if tags.get(f"{TAG_PREFIX}tombstone") == "true":
        raise ModelError(
            f"version {version} of {name!r} was retired ({tags.get(f'{TAG_PREFIX}tombstone_reason', 'no reason')}); "
            "its weights are deleted"
        )
    uri = client.get_model_version_download_uri(name, str(version))
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
    folder = model_folder_in(path)
    if folder is None and (path / "MLmodel").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"version {version} of {name!r} is an MLflow Model without an unlearn model folder")
    os.replace(folder or path, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return dest


def lineage_root(client: Any, name: str, version: str | int) -> Any:
    """The first version of ``version``'s lineage: follow ``parent_version`` tags to a version without one.

    A chain that loops or names a version the registry no longer has ends where it breaks.
    """
    from mlflow.exceptions import MlflowException

    mv = client.get_model_version(name, str(version))
    seen = {str(mv.version)}
    while parent := (mv.tags or {}).get(f"{TAG_PREFIX}parent_version"):
        if parent in seen:
            break
        try:
            mv = client.get_model_version(name, parent)
        except MlflowException:
            break
        seen.add(parent)
    return mv


def versions_for_request(client: Any, name: str, request_id: str) -> list[Any]:
    """Versions whose lineage names ``request_id`` (the registry is the record of what was done)."""
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        ids = (mv.tags or {}).get(f"{TAG_PREFIX}request_ids", "")
        if request_id in ids.split(","):
            out.append(mv)
    return sorted(out, key=lambda mv: int(mv.version))


def _logged_model_id(client: Any, run_id: str) -> str | None:
    """The run's logged model named ``model`` (MLflow 3 logs models outside the run's artifacts)."""
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    for out in sorted(outputs, key=lambda o: o.step, reverse=True):
        if client.get_logged_model(out.model_id).name == MODEL_ARTIFACT:
            return out.model_id
    return None


def register_version(client: Any, name: str, run_id: str, tags: dict[str, str], description: str = "") -> Any:
    """A new version from the run's ``model``, with ``unlearn.*`` lineage tags.

    ``model`` is the MLflow Model that ``log_model_folder`` logged, registered by its
    ``models:/<model_id>`` (a ``runs:/`` source would not resolve to it on every artifact store),
    or, for runs that predate it, the run's plain ``model/`` artifact folder.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Diffusion model with audited data deletions")
    model_id = _logged_model_id(client, run_id)
    return client.create_model_version(
        name,
        source=f"models:/{model_id}" if model_id else f"runs:/{run_id}/{MODEL_ARTIFACT}",
        run_id=run_id,
        tags={f"{TAG_PREFIX}{k}": str(v) for k, v in tags.items()},
        description=description,
        model_id=model_id,
    )


def alias_version(client: Any, name: str, alias: str) -> str | None:
    """The version an alias points at, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as err:
        if getattr(err, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_alias(client: Any, name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` at ``version`` and read it back: the registry must say what we think it says."""
    mv = client.get_model_version(name, str(version))
    if (mv.tags or {}).get(f"{TAG_PREFIX}tombstone") == "true":
        raise ModelError(f"version {version} of {name!r} is retired; alias {alias!r} cannot point at it")
    client.set_registered_model_alias(name, alias, str(version))
    if alias_version(client, name, alias) != str(version):
        raise ModelError(f"alias {alias!r} of {name!r} did not move to version {version}")


def promote(client: Any, name: str, version: str | int, passed: bool) -> str:
    """Move ``production`` to ``version`` if the audit passed, else point ``candidate`` at it."""
    from mlflow.exceptions import MlflowException

    alias = PRODUCTION if passed else CANDIDATE
    client.set_registered_model_alias(name, alias, str(version))
    if passed:
        try:
            cand = client.get_model_version_by_alias(name, CANDIDATE)
        except MlflowException:
            return alias  # no candidate alias to clear
        if str(cand.version) == str(version):
            client.delete_registered_model_alias(name, CANDIDATE)
    return alias


def register_base_model(
    settings: Any,
    model_dir: str | os.PathLike[str],
    dataset_rev: str,
    dataset_digest: str,
    records: int,
    workspace: str,
    absorbed: list[str] | tuple[str, ...] = (),
) -> Any:
    """Register a trained base model as a new version and make it production (no audit: nothing was deleted)."""
    import mlflow

    from ..models.digest import model_digest
    from .lineage import configure, log_dataset
    from .pyfunc import log_model_folder

    client = configure(settings)
    with mlflow.start_run(run_name="register-base-model", tags={f"{TAG_PREFIX}step": "register-base-model"}) as run:
        log_model_folder(model_dir, artifact_path=MODEL_ARTIFACT)
        log_dataset(
            f"{Path(settings.dataset_path).name}@{dataset_rev[:8]}",
            workspace,
            settings.dataset_path,
            dataset_rev,
            dataset_digest,
            context="training",
            records=records,
        )
        mv = register_version(
            client,
            settings.model_name,
            run.info.run_id,
            {
                "kind": "base",
                "dataset_rev": dataset_rev,
                "dataset_digest": dataset_digest,
                "unet_sha256": model_digest(model_dir),
                "request_ids": "",
                # Deletions its training data had already gone through: retention does not count
                # them against it.
                "absorbed_request_ids": ",".join(sorted(absorbed)),
            },
            description="base model, trained on the served dataset",
        )
    client.set_registered_model_alias(settings.model_name, PRODUCTION, str(mv.version))
    return mv
