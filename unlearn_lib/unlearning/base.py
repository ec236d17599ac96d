"""One interface for unlearning algorithms, and the registry that names them.

An algorithm receives an :class:`UnlearningTask` (the base model, the retain and forget
sets, hold-out non-members that look like the forget set) and returns a new model and its
training log. Configuration is a dataclass per algorithm, so the same fields are set from
Python, the CLI (``--set name=value``) or a params file, and are validated in one place.
A named preset (``preset=paper``) fills a published configuration first; explicit options
still win over it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.selection import Scope
from ..data.tensors import TensorSet
from ..errors import ConfigError
from ..models.diffusion import DiffusionModel


@dataclass
class UnlearningTask:
    base: DiffusionModel
    retain: TensorSet
    forget: TensorSet
    scope: Scope
    # Hold-out records never trained on that resemble the forget set (calibration, audits).
    reference: TensorSet | None = None
    # One weight per reference image (distinct images, mean 1) giving it the forget set's mix of
    # kinds (``data.selection.composition_weights``); None: all equal.
    reference_weights: torch.Tensor | None = None
    forget_labels: list[int] = field(default_factory=list)
    # Classes erased by earlier deletions in the base model's lineage: never a retained class or a
    # remap target, and kept forgotten by algorithms that can (EraseDiff's ``keep_forgotten``).
    erased_labels: list[int] = field(default_factory=list)
    # Where each of them was last sent (from the lineage), so a later erasure can follow the chain.
    erased_mapping: dict[int, int] = field(default_factory=dict)
    # Their records when the dataset still holds them (never retained; may anchor "keep forgotten").
    erased: TensorSet | None = None
    # Distinct images of the records earlier record deletions matched, when the dataset still holds
    # them (outside the erased classes, and not also held by a retained record): never retained,
    # and kept forgotten by algorithms that can (EraseDiff's ``keep_forgotten_records_weight``).
    erased_records: TensorSet | None = None
    # The labels those records carried (from the lineage, whether or not the dataset still holds
    # them; outside the erased classes and the labels this deletion's own records carry):
    # EraseDiff's ``records_anchor`` holds the model's behaviour under them.
    erased_record_labels: list[int] = field(default_factory=list)
    # What the lineage took out of this task's data (recorded in unlearning.json).
    prior: dict = field(default_factory=dict)

    @property
    def retained_labels(self) -> list[int]:
        if not self.base.conditional:
            return []
        gone = set(self.erased_labels) | (set(self.forget_labels) if self.scope == "class" else set())
        return [c for c in range(self.base.meta.num_classes) if c not in gone]


@dataclass
class UnlearningResult:
    model: DiffusionModel
    algorithm: str
    config: dict
    steps: int
    seconds: float
    history: dict[str, list[float]]
    stop: dict | None = None
    resumed_from: int | None = None
    # How many retain / forget samples the run drew: evidence of what it trained on.
    samples_drawn: dict[str, int] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class CommonConfig:
    """Fields every algorithm understands."""

    steps: int = 150
    lr: float = 1e-3
    batch_size: int = 64
    forget_batch_size: int = 32
    seed: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0: no EMA (unlearning runs are short)
    params: str = "all"  # all | attention | down | mid | up | embeddings | regex:<pattern>
    cond_drop_prob: float | None = None  # None: the base model's training value
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 50
    # How a batch's timesteps are drawn: i.i.d. uniform, or "antithetic" as the official DDPM code
    # of EraseDiff, SA and SalUn does (half the batch draws t, the other half takes T - 1 - t).
    t_sampling: str = "uniform"
    # diffusers' EMA ramps its decay up as (1 + step) / (10 + step); False keeps it constant from the
    # first step, as the DDIM-derived EMAHelper of the official baselines does.
    ema_warmup: bool = True
    preset: str | None = None  # the named preset these options started from (recorded, see Unlearner.presets)

    def validate(self) -> None:
        if self.t_sampling not in ("uniform", "antithetic"):
            raise ConfigError(f"t_sampling must be uniform or antithetic, got {self.t_sampling!r}")
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.forget_batch_size < 1:
            raise ConfigError("batch_size and forget_batch_size must be >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.cond_drop_prob is not None and not 0 <= self.cond_drop_prob < 1:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        parameter_filter(self.params)


@dataclass(frozen=True)
class ConfigPreset:
    """A published configuration: option values, where each was read, and what it cannot carry over."""

    description: str
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class Unlearner(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    config_cls: ClassVar[type[CommonConfig]]
    presets: ClassVar[dict[str, ConfigPreset]] = {}

    def __init__(self, config: CommonConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        self.config.validate()

    @abstractmethod
    def run(self, task: UnlearningTask, checkpoint_dir: str | None = None, progress: bool = True) -> UnlearningResult:
        """Return a new model; ``task.base`` is left untouched."""


REGISTRY: dict[str, type[Unlearner]] = {}


def register(cls: type[Unlearner]) -> type[Unlearner]:
    if cls.name in REGISTRY:
        raise ValueError(f"algorithm {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_algorithm(name: str) -> type[Unlearner]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


def get_preset(name: str, preset: str) -> ConfigPreset:
    cls = get_algorithm(name)
    if preset not in cls.presets:
        known = ", ".join(sorted(cls.presets)) or "none"
        raise ConfigError(f"algorithm {name!r} has no preset {preset!r} (presets: {known})")
    return cls.presets[preset]


def make_unlearner(name: str, overrides: dict[str, Any] | None = None) -> Unlearner:
    """The algorithm ``name`` configured by ``overrides``; an override ``preset`` fills its values first."""
    cls = get_algorithm(name)
    overrides = dict(overrides or {})
    preset = overrides.get("preset")
    if preset not in (None, "", "none"):
        overrides = {**get_preset(name, str(preset)).values, **overrides}
    return cls(build_config(cls.config_cls, overrides, where=f"algorithm {name!r}"))


def config_fields(config_cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls)}


def build_config(config_cls: type, overrides: dict[str, Any], where: str) -> Any:
    """Instantiate ``config_cls`` from (possibly string) overrides, with type checks."""
    fields = config_fields(config_cls)
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for key, raw in overrides.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{where} has no option {key!r} (options: {', '.join(sorted(fields))})")
        kwargs[name] = _coerce(raw, hints[name], name)
    return config_cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        last: ConfigError | None = None
        for arg in args:
            try:
                return _coerce(value, arg, name)
            except ConfigError as err:
                last = err
        raise last or ConfigError(f"option {name}: cannot use {value!r}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        return [_coerce(v, inner, name) for v in items if str(v).strip() != ""]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"option {name}: {value!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return value


PARAM_GROUPS: dict[str, Callable[[str], bool]] = {
    "all": lambda n: True,
    "attention": lambda n: ".attentions." in n,
    "down": lambda n: n.startswith("down_blocks."),
    "mid": lambda n: n.startswith("mid_block."),
    "up": lambda n: n.startswith("up_blocks."),
    "embeddings": lambda n: n.startswith(("time_embedding.", "class_embedding.")),
}


def parameter_filter(spec: str) -> Callable[[str], bool]:
    if spec in PARAM_GROUPS:
        return PARAM_GROUPS[spec]
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:") :])
        except re.error as err:
            raise ConfigError(f"params {spec!r}: invalid regular expression ({err})") from None
        return lambda n: pattern.search(n) is not None
    raise ConfigError(f"params must be one of {', '.join(PARAM_GROUPS)} or regex:<pattern>, got {spec!r}")


def trainable_parameters(module: nn.Module, spec: str) -> list[nn.Parameter]:
    """Freeze everything outside the named group; return the parameters left trainable."""
    keep = parameter_filter(spec)
    chosen = []
    for name, p in module.named_parameters():
        p.requires_grad_(keep(name))
        if keep(name):
            chosen.append(p)
    if not chosen:
        raise ConfigError(f"params {spec!r} selects no parameters of this model")
    return chosen


def flat_dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x.float() * y.float()).sum() for x, y in zip(a, b, strict=True))
