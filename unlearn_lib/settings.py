"""One settings object for the operational layer, from the environment and an optional file.

Precedence: environment variables (``UNLEARN_*``, plus the standard ``MLFLOW_TRACKING_URI``)
over the settings file (``UNLEARN_SETTINGS`` or an explicit path, YAML) over defaults.
Credentials come only from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
or Kubernetes secrets mounted as such); a settings file that holds one is refused, and
``public()`` is what may be logged, tagged or passed to a pipeline.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

_SECRET_HINTS = ("secret", "password", "token", "access_key", "credential")
ENV_PREFIX = "UNLEARN_"


@dataclass(frozen=True)
class Settings:
    workspace: str = "workspace"
    mlflow_tracking_uri: str | None = None  # default: SQLite file in the workspace
    mlflow_experiment: str = "unlearn-compliance"
    model_name: str = "digits-diffusion"
    dataset_path: str = "data/digits"  # inside the workspace repository
    s3_endpoint_url: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = "unlearn"
    s3_region: str = "us-east-1"
    kfp_host: str | None = None
    pipeline_image: str = "ghcr.io/unlearn/unlearn:0.1.0"

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).resolve()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.workspace_path / 'mlflow.db'}"

    def public(self) -> dict[str, Any]:
        """Settings safe to log: no credentials ever live in this object."""
        return asdict(self) | {"mlflow_tracking_uri": self.tracking_uri}

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        path = path or env.get("UNLEARN_SETTINGS")
        if path:
            values.update(_read_file(Path(path)))
        known = {f.name for f in fields(cls)}
        for f in known:
            key = ENV_PREFIX + f.upper()
            if key in env and env[key] != "":
                values[f] = env[key]
        if "mlflow_tracking_uri" not in values and env.get("MLFLOW_TRACKING_URI"):
            values["mlflow_tracking_uri"] = env["MLFLOW_TRACKING_URI"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**values)

    @classmethod
    def from_public(cls, data: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_mapping_file(
    path: str | os.PathLike[str], what: str, syntax: str = "YAML", mapping: str = "a mapping"
) -> dict[str, Any]:
    """A YAML (or JSON) file holding a mapping; ``what`` names the file in the one-line errors."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid {syntax} ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold {mapping}")
    return data


def _read_file(path: Path) -> dict[str, Any]:
    data = read_mapping_file(path, "settings file")
    for key in data:
        if any(h in str(key).lower() for h in _SECRET_HINTS):
            raise ConfigError(
                f"settings file {path} holds {key!r}: credentials belong in the environment, never in a file"
            )
    return data


def s3_credentials_present(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ if env is None else env)
    return bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")) or bool(env.get("AWS_PROFILE"))
