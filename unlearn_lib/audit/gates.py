"""Audit parameters, metrics and gates: each gate is a metric with a threshold; the verdict is their conjunction."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.selection import SAME_CAPTION_MIN
from ..errors import ConfigError


@dataclass
class AuditParams:
    seed: int = 0
    sampling_steps: int = 25
    guidance_scale: float | None = None  # None: each model's own
    samples_per_class: int = 100
    # Samples of each forgotten class the class gate reads (the grid's samples_per_class and more,
    # from the audit's own stream). 100 moved one model's forgotten_probability by ~0.02 near the
    # gate (0.050-0.105 over five draws); 500 bring that to ~0.009. Only the forgotten classes: cheap.
    forgotten_samples: int = 500
    extraction_samples: int = 500  # per forgotten label (in total for unconditional models)
    extraction_alpha: float = 0.5
    extraction_k: int = 50
    # Not the calibrated stop's timesteps (50, 100, 200), and noise from the audit's own stream
    # (:meth:`stream_seed`): the stop cannot be tuned to the very draws the audit judges with.
    mia_timesteps: list[int] = field(default_factory=lambda: [40, 80, 160])
    mia_noise_draws: int = 4
    pia_timestep: int = 200  # PIA's t (Kong et al. 2024 attack DDPMs at t = 200 of 1000)
    reference_min: int = 16
    # With at least this many hold-out records sharing the forget records' caption (per half),
    # they alone are the membership attacks' non-members (Selection.reference): filled up with
    # plain look-alikes, a retrained model failed mia_auc at 0.18-0.19 on two canary sets.
    reference_same_caption_min: int = SAME_CAPTION_MIN
    feature_extractor: str = "evaluator"  # evaluator | torchscript:<path>
    # Reports never show the forget images nor generated near-copies of them (reports are kept
    # for years; the deleted images must not live on in them). Kept as a parameter so records and
    # callers that set it to true stay valid; false is refused by validate().
    redact_forget_images: bool = True
    # Gates. Defaults pass a good EraseDiff run on the digits preset and fail the base model.
    max_forgotten_probability: float = 0.05
    # A class erasure also passes within this of the judge's floor (forgotten_probability_floor:
    # what it reads on the base model's genuine samples of the class the erased one is now drawn
    # as) when the floor leaves the gate no room: 6 drawn as 4 has a floor of 0.049 against the
    # gate's 0.05. 3 erased onto 9 on five seeds read 0.017-0.035 against a floor of 0.022 (at most
    # 0.013 above it). Only when the class is mostly drawn as that one class; None: the gate alone.
    forgotten_probability_floor_margin: float | None = 0.02
    # Classes erased earlier in the lineage: how far the share of their samples drawn as where they
    # were sent may fall from the base model's (earlier_erasure_drop; the judge cannot read the
    # class itself). Erasing 5 after 3 without the lineage brought 3 back to 0.92 accuracy.
    max_earlier_erasure_drop: float = 0.2
    max_retained_accuracy_drop: float = 0.05
    max_fid_ratio: float = 1.5
    # Record deletions on digits measured 1.08-1.11 (accuracy and FID unchanged), class erasures
    # 1.02-1.05; a damaged model (NegGrad) lands above 2.
    max_retain_loss_ratio: float = 1.15
    max_extracted: int = 0
    mia_auc_tolerance: float | None = None  # None: mia_z standard deviations of the null AUC, at least 0.1
    mia_z: float = 2.0
    # A membership gate whose tolerance, set by the forget set's size (mia_z null standard
    # deviations), exceeds this cannot tell a member from a non-member: it reports INCONCLUSIVE
    # instead of PASS (3 forget images against 16 hold-out records need +-0.37; 9 need +-0.25).
    mia_max_conclusive_tolerance: float = 0.25
    max_forget_class_accuracy_drop: float = 0.15

    def stream_seed(self, stream: str) -> int:
        """The seed of one of the audit's random streams: derived from ``seed`` and the stream's name,
        so it is never an algorithm's own seed (small integers) and draws noise no algorithm saw."""
        digest = hashlib.sha256(f"unlearn-audit/{stream}/{self.seed}".encode()).digest()
        return int.from_bytes(digest[:6], "little")

    @property
    def membership_seed(self) -> int:
        """The noise of the membership (loss) attack, and the seed its metrics record."""
        return self.stream_seed("membership")

    def validate(self) -> None:
        if self.redact_forget_images is not True:
            raise ConfigError(
                f"audit parameter redact_forget_images cannot be turned off (got {self.redact_forget_images!r}): "
                "reports never contain the forget images or generated samples near them"
            )
        positive = (
            "sampling_steps",
            "samples_per_class",
            "forgotten_samples",
            "extraction_samples",
            "extraction_k",
            "mia_noise_draws",
            "reference_same_caption_min",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"audit parameter {name} must be >= 1, got {getattr(self, name)}")
        if not self.mia_timesteps:
            raise ConfigError("audit parameter mia_timesteps must not be empty")
        if self.extraction_alpha <= 0:
            raise ConfigError("audit parameter extraction_alpha must be > 0")
        if self.feature_extractor != "evaluator" and not self.feature_extractor.startswith("torchscript:"):
            raise ConfigError("feature_extractor must be 'evaluator' or 'torchscript:<path>'")
        if not 0 <= self.max_earlier_erasure_drop <= 1:
            raise ConfigError(f"max_earlier_erasure_drop must be in [0, 1], got {self.max_earlier_erasure_drop}")
        if self.mia_auc_tolerance is not None and not 0 < self.mia_auc_tolerance <= 0.5:
            raise ConfigError("mia_auc_tolerance must be in (0, 0.5]")
        if not 0 < self.mia_max_conclusive_tolerance <= 0.5:
            raise ConfigError("mia_max_conclusive_tolerance must be in (0, 0.5]")
        margin = self.forgotten_probability_floor_margin
        if margin is not None and not 0 <= margin <= 1:
            raise ConfigError(f"forgotten_probability_floor_margin must be in [0, 1] or null, got {margin}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Metric:
    name: str
    group: str  # efficacy | memorization | utility
    value: float | None
    description: str
    samples: int | None = None
    seed: int | None = None
    base: float | None = None
    retrain: float | None = None
    threshold: dict[str, Any] | None = None  # {"op": "<=" | ">=" | "within", "value": ...}
    passed: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Why a gate that did not fail proves nothing (too few samples for the test): not a PASS.
    inconclusive: str | None = None

    @property
    def status(self) -> str:
        """PASS, FAIL, INCONCLUSIVE (a gate that did not fail but could not have), or "" (no gate)."""
        return gate_status(self.passed, self.inconclusive)

    @property
    def gap_to_retrain(self) -> float | None:
        if self.value is None or self.retrain is None:
            return None
        return self.value - self.retrain

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gap_to_retrain"] = self.gap_to_retrain
        for k in ("value", "base", "retrain", "gap_to_retrain"):
            if isinstance(d[k], float) and not math.isfinite(d[k]):
                d[k] = None
        return d


def gate(metric: Metric, op: str, limit: float, center: float | None = None) -> Metric:
    """Attach a threshold to ``metric`` and decide it. ``within``: |value - center| <= limit."""
    v = metric.value
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        passed = False
    elif op == "<=":
        passed = v <= limit
    elif op == ">=":
        passed = v >= limit
    elif op == "within":
        assert center is not None
        passed = abs(v - center) <= limit
    else:
        raise ValueError(op)
    metric.threshold = {"op": op, "value": limit, **({"center": center} if center is not None else {})}
    metric.passed = bool(passed)
    return metric


def membership_too_weak(members: int, nonmembers: int, null_std: float, params: AuditParams) -> str | None:
    """Why a membership gate at this size cannot fail, or None when it can.

    ``null_std`` is the spread of the AUC under "no membership signal" for these sample sizes:
    when even ``mia_z`` of it is wider than a meaningful tolerance, not failing proves nothing.
    """
    power = params.mia_z * null_std
    if power <= params.mia_max_conclusive_tolerance:
        return None
    return (
        f"{members} forget images against {nonmembers} hold-out records: the attack's chance spread is "
        f"+-{power:.2f} (> {params.mia_max_conclusive_tolerance}), too wide for a pass to mean anything"
    )


def threshold_text(th: dict | None, digits: int = 3) -> str:
    """A metric's threshold as one line: ``<= 0.05``, ``|x - 0.5| <= 0.1``, or a gate the judge's floor
    moved, with where it came from: ``<= 0.0685 (floor 0.0485 + 0.02; gate 0.05)``, or one the lineage's
    original model moved: ``<= 1.62 (no worse than the original model (41.2); gate 1.5)``."""
    if not th:
        return ""
    v = th.get("value")
    if not isinstance(v, (int, float)):
        return str(th)
    if th.get("op") == "within" and "center" in th:
        return f"|x - {th['center']:g}| <= {v:.{digits}g}"
    text = f"{th.get('op')} {v:.{digits}g}"
    if "original" in th:
        # A utility gate against the parent that also passes a model no worse than the lineage's original.
        orig = f"no worse than the original model ({th['original']:.{digits}g})"
        if v > th["gate"]:
            return f"{text} ({orig}; gate {th['gate']:g})"
        return f"{text}, or {orig}"
    if "floor" not in th:
        return text

    def moved(floor: float) -> str:
        plus = f"floor {floor:.{digits}g} + {th['margin']:g}"
        return f"min({plus}, {th['cap']:g})" if "cap" in th and floor + th["margin"] > th["cap"] else plus

    labels = th.get("labels") or {}
    if len(labels) > 1:
        each = ", ".join(
            f"{f} <= {x['limit']:.{digits}g}" + (f" ({moved(x['floor'])})" if x["limit"] > th["gate"] else "")
            for f, x in labels.items()
        )
        return f"{text} on average, each class its own: {each}; gate {th['gate']:g}"
    return f"{text} ({moved(th['floor'])}; gate {th['gate']:g})"


def gate_status(passed: bool | None, inconclusive: str | None = None) -> str:
    if passed is None:
        return ""
    if not passed:
        return "FAIL"
    return "INCONCLUSIVE" if inconclusive else "PASS"


# One-sided 95%: a gate passed by less than this many standard errors could sit at its limit; the
# pass is then the draw's, not the model's.
SAMPLING_Z = 1.645


def gate_record(m: Metric) -> dict:
    """A gated metric as the audit record's ``gates`` list holds it (both families write the same)."""
    return {
        "metric": m.name,
        **(m.threshold or {}),
        "value": m.value,
        "passed": m.passed,
        **({"inconclusive": m.inconclusive} if m.inconclusive else {}),
    }


def share_upper_bound(hits: int, n: int, z: float = SAMPLING_Z) -> float:
    """Wilson's upper bound on a share seen as ``hits`` of ``n``: 0 of 20 is not a share of 0 (its
    bound is 0.12), where the share's plain standard error would call it certain."""
    if not 0 <= hits <= n:
        raise ValueError(f"a share of {hits} in {n} is not a share")
    if n < 1:
        return 1.0
    p, z2 = hits / n, z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return min(1.0, (centre + half) / (1 + z2 / n))


def drop_by_counts(mine: Mapping[int, Sequence[bool]], theirs: Mapping[int, Sequence[bool]] | None) -> float | None:
    """The reference's share of samples judged right minus the judged model's, from the counts (every
    class has as many samples, so it is the classes' mean): a drop of exactly a gate must not pass or
    fail by the rounding of float means. None where the two do not pair up."""
    if not mine or theirs is None or any(c not in theirs or len(theirs[c]) != len(mine[c]) for c in mine):
        return None
    return (sum(map(sum, theirs.values())) - sum(map(sum, mine.values()))) / sum(len(v) for v in mine.values())


def paired_error(mine: Mapping[int, Sequence[bool]], theirs: Mapping[int, Sequence[bool]]) -> tuple[float, int, int]:
    """The standard error of the drop from ``theirs`` to ``mine`` (per class, whether each sample was
    judged right; sample i of both drawn from the same noise): ``(stderr, pairs, disagreeing pairs)``.

    The pairs' differences give it (an unpaired binomial error, which ignores that most pairs agree,
    would call far more passes inconclusive); classes weigh equally, as the accuracy averages them.
    It is never taken below what the number of pairs allows: pairs that all agree have no spread at
    all, and would prove a drop of 0 from 10 samples as surely as from 1,000. The floor puts the
    share of pairs that disagree at its Wilson bound (:func:`share_upper_bound`) in the same
    variance, ``(D+ - drop^2) / n``: 0 of 10 pairs bound a drop at 0.24, 0 of 20 at 0.13, 0 of 360
    at 0.0075. Every class must have as many samples (the audits draw ``samples_per_class`` each),
    in both: the floor pools the pairs, where the drop weighs classes equally. With equal classes
    it is nearly always the larger; the pairs' own error wins only where few disagree on a class
    of very few samples.
    """
    var, means, n, disagree = 0.0, [], 0, 0
    for c in mine:
        d = [float(a) - float(b) for a, b in zip(theirs[c], mine[c], strict=True)]
        k = len(d)
        mean = sum(d) / k if k else 0.0
        var += sum((x - mean) ** 2 for x in d) / (k - 1) / k if k > 1 else 1.0
        means.append(mean)
        n, disagree = n + k, disagree + sum(1 for x in d if x)
    if not n:
        return 1.0, 0, 0
    drop = sum(means) / len(means)
    floor = math.sqrt(max(share_upper_bound(disagree, n) - drop * drop, 0.0) / n)
    return max(math.sqrt(var) / len(means), floor), n, disagree


def paired_drop_band(
    m: Metric,
    mine: Mapping[int, Sequence[bool]],
    bars: Sequence[tuple[str, Mapping[int, Sequence[bool]] | None, float]],
    knob: str = "samples_per_class",
) -> Metric:
    """A passed accuracy-drop gate the sample could have decided is INCONCLUSIVE, not PASS.

    ``mine``: per class, whether each of the judged model's samples was judged that class.
    ``bars``: (name, the same of a reference model, the drop allowed against it). The models draw
    each class from the same noise (the audit's seed), so sample i of both is a pair and the drop's
    standard error is the pairs' (:func:`paired_error`). A pass conclusive against any bar is a
    PASS; a fail stays a fail (a deletion is never promoted on a doubt). ``knob``: the setting that
    buys power, named in the message.
    """
    if not m.passed or m.value is None or m.threshold is None or not mine:
        return m
    classes = list(mine)
    judged = []
    for name, theirs, bar in bars:
        if theirs is None or any(c not in theirs or len(theirs[c]) != len(mine[c]) for c in classes):
            continue
        se, n, disagree = paired_error(mine, theirs)
        bound = m.value + SAMPLING_Z * se
        key = "" if name == "parent" else f"_to_{name}"
        m.details.update({f"stderr{key}": se, f"upper_bound{key}": bound, f"pairs_disagreeing{key}": disagree})
        judged.append((name, se, bound, bar, n, disagree))
    if not judged:
        return m
    m.details["z"] = SAMPLING_Z
    if any(bound <= bar for _, _, bound, bar, _, _ in judged):
        return m
    m.inconclusive = (
        "; ".join(
            f"drop {m.value:.3f} +- {se:.3f} against {bar:.3g}{'' if name == 'parent' else f' (the {name})'} "
            f"(95% bound {bound:.3f}), paired over {n} samples ({disagree} disagree)"
            for name, se, bound, bar, n, disagree in judged
        )
        + f": within sampling error of the gate; the model may sit at it ({knob})"
    )
    return m


def failed_gates(record: dict) -> list[str]:
    """The metrics of the gates an audit record (audit.json) failed, in the record's order."""
    return [g["metric"] for g in record.get("gates", []) if g.get("passed") is False]


def inconclusive_gates(record: dict) -> list[str]:
    """The metrics of the gates an audit record did not fail but could not have, in the record's order."""
    return [g["metric"] for g in record.get("gates", []) if g.get("inconclusive") and g.get("passed") is not False]


def failed_gate_groups(record: dict) -> list[str]:
    """The groups (efficacy, memorization, utility, policy, ...) of the gates an audit record failed."""
    metrics = record.get("metrics") or {}
    return sorted({(metrics.get(m) or {}).get("group", "unknown") for m in failed_gates(record)})


def verdict(metrics: list[Metric]) -> bool:
    """No gate failed (an inconclusive gate does not fail a run; the other gates decide)."""
    gated = [m for m in metrics if m.passed is not None]
    return bool(gated) and all(m.passed for m in gated)


# Which way loosens each setting: a larger threshold (or a smaller sample) lets more through.
_LOOSER_WHEN_LARGER = (
    "max_forgotten_probability",
    "forgotten_probability_floor_margin",
    "max_earlier_erasure_drop",
    "max_retained_accuracy_drop",
    "max_fid_ratio",
    "max_retain_loss_ratio",
    "max_extracted",
    "mia_auc_tolerance",
    "mia_z",
    "mia_max_conclusive_tolerance",
    "max_forget_class_accuracy_drop",
    "max_attack_success",
    "reference_same_caption_min",  # more same-caption records needed: the reference stays diluted
)
_AUTO_WHEN_NONE = ("mia_auc_tolerance",)  # None: computed from the forget-set size
_OFF_WHEN_NONE = ("forgotten_probability_floor_margin",)  # None: a leniency turned off, stricter
_LOOSER_WHEN_SMALLER = (
    "samples_per_class",
    "forgotten_samples",
    "extraction_samples",
    "mia_noise_draws",
    "attack_samples",
)
# Beyond these no audit passes, whatever a run asks for: the gate is reported and fails.
HARD_LIMITS: dict[str, float] = {
    "max_forgotten_probability": 0.2,
    "forgotten_probability_floor_margin": 0.05,
    "max_earlier_erasure_drop": 0.5,
    "max_retained_accuracy_drop": 0.15,
    "max_fid_ratio": 3.0,
    "max_retain_loss_ratio": 1.5,
    "max_extracted": 0,
    "mia_auc_tolerance": 0.25,
    "mia_z": 4.0,
    "max_forget_class_accuracy_drop": 0.5,
}


def relaxations(params: Any) -> dict[str, dict[str, Any]]:
    """The settings of ``params`` looser than its class's defaults: ``{name: {"used", "default"}}``.

    A threshold left at ``None`` where the default sets one (a gate turned off) is looser too.
    """
    defaults = type(params)()
    out: dict[str, dict[str, Any]] = {}
    for name in (*_LOOSER_WHEN_LARGER, *_LOOSER_WHEN_SMALLER):
        if not hasattr(params, name):
            continue
        used, default = getattr(params, name), getattr(defaults, name)
        if used == default:
            continue
        if default is None:
            if name in _AUTO_WHEN_NONE:  # a fixed value in place of the computed one
                out[name] = {"used": used, "default": "auto"}
            continue  # a gate that is off by default is only ever tightened
        if used is None and name in _OFF_WHEN_NONE:
            continue
        larger = name in _LOOSER_WHEN_LARGER
        if used is None or (used > default if larger else used < default):
            out[name] = {"used": used, "default": default}
    return out


def relaxed_summary(relaxed: dict[str, dict[str, Any]]) -> str:
    """One line for a tag: ``max_fid_ratio=2.0 (default 1.5); ...`` or ``none``."""
    return "; ".join(f"{k}={v['used']} (default {v['default']})" for k, v in sorted(relaxed.items())) or "none"


def hard_limit_metric(params: Any) -> Metric | None:
    """A failing gate when a setting goes beyond its hard limit (None when none does)."""
    beyond = {
        name: getattr(params, name)
        for name, limit in HARD_LIMITS.items()
        if hasattr(params, name) and getattr(params, name) is not None and getattr(params, name) > limit
    }
    if not beyond:
        return None
    m = Metric(
        "settings_beyond_hard_limits",
        "policy",
        float(len(beyond)),
        "audit settings looser than the hard limits no promoted model may be judged by: "
        + ", ".join(f"{k}={v} (limit {HARD_LIMITS[k]})" for k, v in beyond.items()),
        details={"beyond": beyond, "limits": {k: HARD_LIMITS[k] for k in beyond}},
    )
    return gate(m, "<=", 0)


def audit_schema() -> dict:
    """The JSON Schema that ``audit.json`` validates against."""
    import json
    from importlib import resources

    return json.loads(resources.files("unlearn_lib.audit").joinpath("audit.schema.json").read_text())


def validate_record(record: dict) -> None:
    """Raise ``jsonschema.ValidationError`` if ``record`` does not follow the audit schema."""
    import jsonschema

    jsonschema.validate(record, audit_schema())
