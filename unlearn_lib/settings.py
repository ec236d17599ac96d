"""One settings object for the operational layer, from the environment and an optional file.

Precedence (highest first): keyword overrides given to :meth:`Settings.load`, environment
variables (``UNLEARN_*``), the settings file (``UNLEARN_SETTINGS`` or an explicit path, YAML),
the standard ``MLFLOW_TRACKING_URI`` (for ``mlflow_tracking_uri`` only), defaults.
``Settings(...)`` itself reads neither the environment nor a file: it holds exactly what it is
given, validated. Invalid values are one-line :class:`ConfigError`\\ s naming the setting.

Credentials come only from the environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
or Kubernetes secrets mounted as such); a settings file holding one, under a credential-like
key or as the password of a URL, is refused.

Three views of the settings, by destination:

- ``public()``: what may be logged or tagged. Every URL has its password (and secret-looking
  query parameters) masked as ``***``: ``postgresql://app:***@db/unlearn``.
- ``for_steps()``: what is passed to pipeline steps (it ends up in the pipeline spec, which is
  stored and shown by the orchestrator). URLs keep their user but never a password. A step
  rebuilds its settings with ``Settings.from_public(data)``, which puts the state database's
  password back from ``UNLEARN_STATE_DB_PASSWORD`` when ``state_db_url`` names a user and no
  password; MLflow reads ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` itself.
  Both variables are injected into the step's environment from a secret, never from the spec.
- the object itself, which holds whatever password the environment gave it.

``Settings.load`` honours ``UNLEARN_STATE_DB_PASSWORD`` the same way, so the orchestrating
process and its steps reach the database with the same configuration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError
from .redact import MASK, redact_text, redact_url, split_url_password

_SECRET_HINTS = ("secret", "password", "token", "access_key", "credential")
ENV_PREFIX = "UNLEARN_"
STATE_DB_PASSWORD_ENV = "UNLEARN_STATE_DB_PASSWORD"
_URL_FIELDS = ("mlflow_tracking_uri", "s3_endpoint_url", "kfp_host", "state_db_url", "git_remote")
IMAGE_REPOSITORY = "ghcr.io/unlearn/unlearn"


def default_image() -> str:
    """The project image of this package version (``infra/Dockerfile``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{IMAGE_REPOSITORY}:{version('unlearn-lib')}"
    except PackageNotFoundError:
        return f"{IMAGE_REPOSITORY}:latest"
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_USER_NO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@\[\]]+)@")


@dataclass(frozen=True)
class _Layers:
    """What ``Settings.load`` reads below its overrides, handed to ``settings_customise_sources``."""

    env: Mapping[str, str]
    file: dict[str, Any]


# settings_customise_sources is a classmethod with no per-call arguments; load() passes the
# environment it was given (a dict in tests, os.environ otherwise) through this variable.
_LAYERS: ContextVar[_Layers | None] = ContextVar("unlearn_settings_layers", default=None)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {
            (k if self.case_sensitive else k.lower()): v
            for k, v in self._environ.items()
            if not (self.env_ignore_empty and v == "")
        }


class _MlflowFallbackSource(PydanticBaseSettingsSource):
    """``MLFLOW_TRACKING_URI``, MLflow's own variable, below the settings file."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self._uri = environ.get("MLFLOW_TRACKING_URI") or None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return (self._uri if field_name == "mlflow_tracking_uri" else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {"mlflow_tracking_uri": self._uri} if self._uri else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        # A YAML file may say `s3_prefix: 2024`; that is the string "2024", not an error.
        coerce_numbers_to_str=True,
    )

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
    pipeline_image: str = Field(default_factory=lambda: default_image())
    # Stateless steps (containers, a cluster): the workspace repository is cloned from this git
    # URL and its data pulled from the DVC remote instead of opening the `workspace` folder.
    git_remote: str | None = None
    dvc_remote_url: str | None = None  # default with git_remote and s3_bucket: s3://BUCKET/PREFIX/dvc
    scratch_dir: str | None = None  # a stateless step's clones and caches (default: a temporary folder)
    state_db_url: str | None = None  # default: SQLite file in the workspace
    lease_ttl_seconds: float = Field(300.0, gt=0, allow_inf_nan=False)
    max_attempts: int = Field(3, ge=1)
    # A candidate that forgot but failed a utility gate alone is unlearned again with the next seed,
    # this many times (0: never). One unlearning run is one draw: from the same parent, erasing 1
    # on 5 seeds gave kept-class FID 0.9-1.1x the parent's on four and 1.8x on one (class 0 at
    # 0.54). A failed forgetting or memorization gate is never redrawn: drawing until the evidence
    # passes would weaken it. Every draw is a registered candidate with its own audit.
    utility_redraws: int = Field(1, ge=0)
    # Model versions trained on data a deletion erased are retired this many days after it (0: at once).
    retention_grace_days: float = Field(30.0, ge=0, allow_inf_nan=False)
    # The audit's hard limits (unlearn_lib.audit.gates.HARD_LIMITS) hold against any run's
    # --audit-set. Operators only (settings file or environment, never a request): false lets a
    # deployment's runs go beyond them, e.g. a test stack's deliberately cheap runs; every
    # version audited that way is tagged unlearn.audit_hard_limits=off.
    audit_hard_limits: bool = True

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(type(self).model_fields))
        if unknown:
            raise ConfigError(_unknown_settings(unknown))
        try:
            super().__init__(**values)
        except ValidationError as err:
            raise _config_error(err) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layers = _LAYERS.get()
        if layers is None:
            # Settings(...), replace() and from_public() hold exactly what they are given: a
            # pipeline step must not pick up a stray UNLEARN_* variable of its container.
            return (init_settings,)
        return (
            init_settings,
            _MappingEnvSource(settings_cls, layers.env),
            InitSettingsSource(settings_cls, layers.file),
            _MlflowFallbackSource(settings_cls, layers.env),
        )

    @field_validator("state_db_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not _URL_SCHEME.match(value):
            raise PydanticCustomError(
                "url", "must be a database URL such as postgresql://user@host/db or sqlite:///path/state.db"
            )
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() end up in logs and tracebacks: they show the public() form of URLs.
        for name, value in super().__repr_args__():
            yield name, (redact_url(value) if name in _URL_FIELDS and isinstance(value, str) else value)

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace).resolve()

    @property
    def stateless(self) -> bool:
        """Steps reach every piece of state over the network (git remote, DVC remote, S3, servers)."""
        return self.git_remote is not None

    @property
    def dvc_remote(self) -> str | None:
        if self.dvc_remote_url:
            return self.dvc_remote_url
        if self.git_remote and self.s3_bucket:
            return f"s3://{self.s3_bucket}/{self.s3_prefix.strip('/')}/dvc"
        return None

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.workspace_path / 'mlflow.db'}"

    @property
    def state_url(self) -> str:
        """The state database (SQLAlchemy URL): ``state_db_url``, or SQLite in the workspace."""
        if self.state_db_url:
            return self.state_db_url
        return f"sqlite:///{self.workspace_path / 'state.db'}"

    def _resolved(self) -> dict[str, Any]:
        return self.model_dump() | {"mlflow_tracking_uri": self.tracking_uri}

    def public(self) -> dict[str, Any]:
        """Settings safe to log or tag: every URL's password and query secrets masked."""
        return {
            k: (redact_url(v) if k in _URL_FIELDS and isinstance(v, str) else v) for k, v in self._resolved().items()
        }

    def for_steps(self) -> dict[str, Any]:
        """Settings for pipeline steps: exact values, except that URLs carry no password (see the
        module docstring for how a step gets it back)."""
        out = self._resolved()
        for k in _URL_FIELDS:
            if isinstance(out[k], str):
                # redact_url after the split masks what remains secret: query parameters.
                out[k] = redact_url(split_url_password(out[k])[0])
        return out

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` applied."""
        return type(self)(**(self.model_dump() | changes))

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Settings from ``overrides`` > environment (``env`` instead of os.environ when given) >
        settings file > ``MLFLOW_TRACKING_URI`` > defaults; ``None`` overrides are ignored."""
        env = dict(os.environ if env is None else env)
        path = path or env.get("UNLEARN_SETTINGS")
        file_values = _read_file(Path(path)) if path else {}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted((set(file_values) | set(overrides)) - set(cls.model_fields))
        if unknown:
            raise ConfigError(_unknown_settings(unknown))
        token = _LAYERS.set(_Layers(env, file_values))
        try:
            settings = cls(**overrides)
        finally:
            _LAYERS.reset(token)
        return settings._with_state_db_password(env)

    @classmethod
    def from_public(cls, data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``for_steps()`` (or ``public()``) output, passwords taken from ``env``
        (default os.environ); unknown keys are ignored so older steps read newer settings."""
        values = {k: v for k, v in data.items() if k in cls.model_fields}
        for k in _URL_FIELDS:
            if isinstance(values.get(k), str):
                stripped, password = split_url_password(values[k])
                if password == MASK:  # a public() copy: the mask is not a password
                    values[k] = stripped
        settings = cls(**values)
        return settings._with_state_db_password(os.environ if env is None else env)

    def step_environment(self) -> dict[str, str]:
        """Environment variables that carry the credentials ``for_steps()`` leaves out of the URLs.

        A local runner sets them for its step processes; on a cluster they come from a Secret.
        """
        env: dict[str, str] = {}
        if self.state_db_url:
            password = split_url_password(self.state_db_url)[1]
            if password:
                env[STATE_DB_PASSWORD_ENV] = password
        if self.mlflow_tracking_uri:
            parts = urlsplit(self.mlflow_tracking_uri)
            if parts.password:
                env["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
                env["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
        return env

    def _with_state_db_password(self, env: Mapping[str, str]) -> Settings:
        password = env.get(STATE_DB_PASSWORD_ENV)
        if not password and env.get("UNLEARN_STATE_DB_URL") and self.state_db_url:
            # The full URL in the environment (as a step process inherits it) is the same database.
            stripped, given = split_url_password(env["UNLEARN_STATE_DB_URL"])
            if given and stripped == self.state_db_url:
                password = given
        if not (self.state_db_url and password):
            return self
        m = _USER_NO_PASSWORD.match(self.state_db_url)
        if m is None:  # no user, or a password already given explicitly
            return self
        url = f"{m.group('head')}:{quote(password, safe='')}@{self.state_db_url[m.end() :]}"
        return self.replace(state_db_url=url)


def _unknown_settings(names: list[str]) -> str:
    return f"unknown setting(s) {', '.join(names)} (known: {', '.join(sorted(Settings.model_fields))})"


def _config_error(err: ValidationError) -> ConfigError:
    errors = err.errors(include_url=False)
    extra = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and e["loc"])
    if extra:
        return ConfigError(_unknown_settings(extra))
    first = errors[0]
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    shown = repr(first.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    # The rejected value may be a URL with a password in it.
    return ConfigError(f"setting {name}: {first['msg']} (got {redact_text(redact_url(shown))})")


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
    for key, value in data.items():
        if any(h in str(key).lower() for h in _SECRET_HINTS):
            raise ConfigError(
                f"settings file {path} holds {key!r}: credentials belong in the environment, never in a file"
            )
        if isinstance(value, str) and redact_url(value) != value:
            raise ConfigError(
                f"settings file {path} holds a password in {key!r}: credentials belong in the environment, "
                "never in a file"
            )
    return {str(k): v for k, v in data.items()}


def s3_credentials_present(env: Mapping[str, str] | None = None) -> bool:
    env = dict(os.environ if env is None else env)
    return bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")) or bool(env.get("AWS_PROFILE"))
