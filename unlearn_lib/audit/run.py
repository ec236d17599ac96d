"""The audit: evidence that the data's influence is gone and that the model still works.

``run_audit`` measures the unlearned model (and the base model it came from, and a
``retrain`` reference when one exists) and decides every gate. It must be able to fail:
auditing the untouched base model as if it were unlearned fails.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..data.manifest import Dataset, Record, load_dataset
from ..data.selection import (
    ForgetTargets,
    Selection,
    composition_weights,
    distinct_records,
    effective_size,
    select,
)
from ..data.tensors import TensorSet
from ..errors import ConfigError, ModelError
from ..models.diffusion import DiffusionModel
from ..models.digest import model_digest
from ..models.lineage import erased_labels, prior_deletions, prior_matcher
from ..models.objectives import drawing_classes
from ..models.sampling import sample
from ..utils import atomic_output_dir, pick_device, write_json
from .efficacy import (
    ClassSamples,
    ForgottenFigures,
    class_figures,
    forgotten_figures,
    generate_class_samples,
    nearest_class,
)
from .evaluator import Evaluator, train_evaluator
from .forget_quality import retrain_position
from .gates import (
    HARD_LIMITS,
    SAMPLING_Z,
    AuditParams,
    Metric,
    drop_by_counts,
    gate,
    gate_record,
    hard_limit_metric,
    membership_too_weak,
    paired_drop_band,
    paired_error,
    relaxations,
    verdict,
)
from .memorization import (
    ExtractionResult,
    MembershipResult,
    chance_allowance,
    extraction_test,
    loss_attack,
    loss_scores,
    neighbourhood_distance,
    pia_attack,
    pia_scores,
)
from .utility import (
    EvaluatorFeatures,
    FeatureExtractor,
    RealReference,
    TorchScriptFeatures,
    denoising_loss,
)

AUDIT_SCHEMA_VERSION = 1
ROLES = ("base", "unlearned", "retrain")


@dataclass
class ModelMeasurements:
    """Everything measured on one model; the same measurements for base, unlearned and retrain."""

    role: str
    path: str
    sha256: str
    class_samples: ClassSamples | None = None
    uncond_samples: torch.Tensor | None = None
    uncond_probs: torch.Tensor | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    extraction: ExtractionResult | None = None
    # Hold-out records of the forget records' kind, never trained on, against the same samples:
    # how often the extraction criterion passes by chance (memorization.chance_allowance).
    control: ExtractionResult | None = None
    membership: MembershipResult | None = None
    pia: MembershipResult | None = None
    # The lineage's original only (it keeps no sample: it still holds what was erased since): per
    # retained class, whether the judge called each of its samples that class.
    retained_correct: dict[int, list[bool]] | None = None
    seconds: float = 0.0


@dataclass
class AuditResult:
    passed: bool
    metrics: list[Metric]
    record: dict
    measurements: dict[str, ModelMeasurements]
    out: Path | None = None


def _feature_extractor(params: AuditParams, evaluator: Evaluator) -> FeatureExtractor:
    if params.feature_extractor == "evaluator":
        return EvaluatorFeatures(evaluator)
    return TorchScriptFeatures(params.feature_extractor.split(":", 1)[1])


def _retained_classes(model: DiffusionModel, selection: Selection) -> list[int]:
    """The classes the model should still draw: not this deletion's, nor any its lineage erased.

    A class erased earlier is gone from both the base and the unlearned model; counted as
    "retained", it dilutes the accuracy gate (two erased classes of ten cut a 5-point drop on
    the real ones to 3.75) and its samples would enter the FID.
    """
    if not model.conditional:
        return []
    gone = set(erased_labels(prior_deletions(model.meta.lineage)))
    if selection.scope == "class":
        gone |= set(selection.forget_labels)
    return [c for c in range(model.meta.num_classes) if c not in gone]


def measure_model(
    role: str,
    path: str | os.PathLike[str],
    model: DiffusionModel,
    dataset: Dataset,
    selection: Selection,
    evaluator: Evaluator,
    params: AuditParams,
    reference: TensorSet | None,
    neighbourhood: torch.Tensor | None,
    forget_distinct: TensorSet,
    real_reference: RealReference,
    holdout_retain: TensorSet,
    progress: bool,
    lookalikes: TensorSet | None,
    retained_classes: list[int],
    reference_weights: torch.Tensor | None = None,
    control: tuple[TensorSet, torch.Tensor] | None = None,
) -> ModelMeasurements:
    """``retained_classes``: the base model's (every model is judged on the same classes).

    ``control``: hold-out images for the extraction test's chance rate, and their neighbourhood.

    ``reference_weights``: one per ``reference`` image, giving it the forget set's mix of kinds.
    """
    t0 = time.perf_counter()
    m = ModelMeasurements(role=role, path=str(path), sha256=model_digest(path))
    scope = selection.scope
    forget_labels = selection.forget_labels
    if model.conditional:
        m.class_samples = generate_class_samples(
            model,
            evaluator,
            params.samples_per_class,
            steps=params.sampling_steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
            progress=progress,
        )
        figs = class_figures(m.class_samples, [])  # accuracy; the forgotten classes: _forgotten_draws
        m.figures["class_accuracy"] = figs.accuracy
        m.figures["retained_accuracy"] = (
            sum(figs.accuracy[c] for c in retained_classes) / len(retained_classes)
            if retained_classes
            else float("nan")
        )
        if scope == "class":
            fg = _forgotten_draws(model, evaluator, m.class_samples, forget_labels, params, progress)
            m.figures["forgotten_probability"] = sum(f.probability for f in fg.values()) / len(fg)
            m.figures["forgotten_probability_by_class"] = {str(c): f.probability for c, f in fg.items()}
            m.figures["forgotten_probability_stderr_by_class"] = {str(c): f.stderr for c, f in fg.items()}
            m.figures["forgotten_samples"] = min(f.samples for f in fg.values())
            m.figures["forgotten_rate"] = sum(f.rate for f in fg.values()) / len(fg)
            m.figures["forgotten_entropy"] = sum(f.entropy for f in fg.values()) / len(fg)
        elif forget_labels:  # unlabelled forget records have no class of their own to keep
            m.figures["forget_class_accuracy"] = sum(figs.accuracy[c] for c in forget_labels) / len(forget_labels)
        gen_retained = m.class_samples.images_of(retained_classes)
    else:
        n = params.samples_per_class * max(1, dataset.num_classes)
        m.uncond_samples = sample(
            model, None, num_samples=n, steps=params.sampling_steps, seed=params.seed, progress=progress
        )
        m.uncond_probs = evaluator.predict_proba(m.uncond_samples)
        pred = m.uncond_probs.argmax(-1)
        if scope == "class":
            m.figures["forgotten_probability"] = float(torch.isin(pred, torch.tensor(forget_labels)).float().mean())
            gen_retained = m.uncond_samples[~torch.isin(pred, torch.tensor(forget_labels))]
        else:
            gen_retained = m.uncond_samples
    m.figures.update(real_reference.measure(gen_retained))
    m.figures["retain_loss"] = denoising_loss(model, holdout_retain, seed=params.seed)
    if lookalikes is not None:
        m.figures["lookalike_loss"] = denoising_loss(model, lookalikes, seed=params.seed)
        m.figures["lookalike_records"] = len(lookalikes)
    if scope != "class":
        assert neighbourhood is not None
        m.extraction, m.control = extraction_of(model, forget_distinct, neighbourhood, params, progress, control)
        if reference is not None and len(reference):
            m.membership, m.pia = membership_attacks(model, forget_distinct, reference, params, reference_weights)
    m.seconds = time.perf_counter() - t0
    return m


def _forgotten_draws(
    model: DiffusionModel,
    evaluator: Evaluator,
    grid: ClassSamples,
    forget_labels: Sequence[int],
    params: AuditParams,
    progress: bool,
) -> dict[int, ForgottenFigures]:
    """Each forgotten class on the grid's samples of it and ``forgotten_samples`` in all.

    The extra samples come from the audit's own stream, so the grid (which every other figure
    reads) stays the draw it always was; they are judged and dropped, never kept or shown.
    """
    extra = max(0, params.forgotten_samples - grid.per_class)
    probs = {c: grid.for_class(c)[1] for c in forget_labels}
    if extra:
        labels = torch.tensor([c for c in forget_labels for _ in range(extra)], dtype=torch.long)
        images = sample(
            model,
            labels,
            steps=params.sampling_steps,
            guidance_scale=params.guidance_scale,
            seed=params.stream_seed("forgotten"),
            progress=progress,
        )
        more = evaluator.predict_proba(images)
        for i, c in enumerate(forget_labels):
            probs[c] = torch.cat([probs[c], more[i * extra : (i + 1) * extra]])
    return {c: forgotten_figures(p, c) for c, p in probs.items()}


def measure_utility(
    path: str | os.PathLike[str],
    model: DiffusionModel,
    dataset: Dataset,
    selection: Selection,
    evaluator: Evaluator,
    params: AuditParams,
    real_reference: RealReference,
    holdout_retain: TensorSet,
    retained_classes: list[int],
    progress: bool,
) -> ModelMeasurements:
    """The utility figures only (retained accuracy, FID/KID, retain loss), as ``measure_model`` takes them.

    For the lineage's original model. It draws every class with the audit's seed, as the other
    models do, so that its figures differ from theirs by the model and not by the noise; only the
    retained classes' samples are used, and none is kept or shown: the original still holds what
    was erased since.
    """
    t0 = time.perf_counter()
    m = ModelMeasurements(role="original", path=str(path), sha256=model_digest(path))
    if model.conditional:
        cs = generate_class_samples(
            model,
            evaluator,
            params.samples_per_class,
            steps=params.sampling_steps,
            guidance_scale=params.guidance_scale,
            seed=params.seed,
            progress=progress,
        )
        acc = class_figures(cs, []).accuracy
        m.figures["retained_accuracy"] = sum(acc[c] for c in retained_classes) / len(retained_classes)
        m.retained_correct = _judged_right(cs, retained_classes)
        gen_retained = cs.images_of(retained_classes)
    else:
        # As many as the other models draw (an unconditional model has no classes of its own).
        n = params.samples_per_class * max(1, dataset.num_classes)
        images = sample(model, None, num_samples=n, steps=params.sampling_steps, seed=params.seed, progress=progress)
        gen_retained = images
        if selection.scope == "class":
            pred = evaluator.predict_proba(images).argmax(-1)
            gen_retained = images[~torch.isin(pred, torch.tensor(selection.forget_labels))]
    m.figures.update(real_reference.measure(gen_retained))
    m.figures["retain_loss"] = denoising_loss(model, holdout_retain, seed=params.seed)
    m.seconds = time.perf_counter() - t0
    return m


def extraction_of(
    model: DiffusionModel,
    forget_distinct: TensorSet,
    neighbourhood: torch.Tensor,
    params: AuditParams,
    progress: bool = False,
    control: tuple[TensorSet, torch.Tensor] | None = None,
) -> tuple[ExtractionResult, ExtractionResult | None]:
    """The audit's extraction test of ``model`` on the forget images (``neighbourhood``: theirs).

    With ``control`` (hold-out images and their neighbourhood), the same test on them against
    the same samples: what passes by chance.
    """
    # Conditional models are asked for the forget records' classes (the null class for a record
    # without a label, where training learned it), extraction_samples each.
    labels = drawing_classes(forget_distinct.labels, model.null_class)
    y = torch.tensor([c for c in labels for _ in range(params.extraction_samples)]) if labels else None
    generated = sample(
        model,
        y,
        num_samples=params.extraction_samples,
        steps=params.sampling_steps,
        guidance_scale=params.guidance_scale,
        seed=params.seed + 1,
        progress=progress,
    )
    alpha, k = params.extraction_alpha, params.extraction_k
    asked = [c if c != model.null_class else "null" for c in labels] if model.conditional else None
    found = dataclasses.replace(extraction_test(forget_distinct, neighbourhood, generated, alpha, k), labels=asked)
    if control is None or not len(control[0]):
        return found, None
    return found, extraction_test(control[0], control[1], generated, alpha, k)


def earlier_deleted_records(
    dataset: Dataset, lineage: dict[str, Any] | None, forget_now: Sequence[Record]
) -> tuple[list[Record], list[Record]]:
    """Training records that the lineage's earlier record deletions matched and ``dataset`` still
    holds (those this deletion names again excluded, and those whose image a retained record also
    holds: that image stays learned), and the chance control for their extraction test: hold-out
    records of their classes that no deletion names.

    Empty when the dataset is a purged one (the pipeline's): there the records are gone, and what
    a later deletion does to them cannot be measured from the data.
    """
    deletions = prior_deletions(lineage)
    by_records = [d for d in deletions if d.get("scope") != "class"]
    if not by_records:
        return [], []
    matches, any_deletion = prior_matcher(by_records), prior_matcher(deletions)
    now = {r.record_id for r in forget_now}
    held = {r.sha256 for r in dataset.train if not any_deletion(r) and r.record_id not in now}
    records = [r for r in dataset.train if matches(r) and r.record_id not in now and r.sha256 not in held]
    labels = {r.label for r in records}
    control = [r for r in dataset.holdout if r.label in labels and not any_deletion(r)]
    return records, control


def _earlier_records_metric(
    unlearned: DiffusionModel,
    base: DiffusionModel,
    dataset: Dataset,
    train_pool: TensorSet,
    records: list[Record],
    control_records: list[Record],
    params: AuditParams,
    progress: bool,
) -> Metric:
    """Does a later deletion bring back records an earlier one deleted? The extraction test of the
    unlearned model (and of its parent) on them, gated as ``extracted_records``: at most
    ``max_extracted`` beyond what passes by chance on never-seen records of their classes."""
    distinct = TensorSet.from_records(dataset, records).distinct()
    hood = neighbourhood_distance(distinct, train_pool, params.extraction_k)
    control = None
    if control_records:
        control_set = TensorSet.from_records(dataset, control_records)
        control = (control_set, neighbourhood_distance(control_set, train_pool, params.extraction_k))
    u, u_chance = extraction_of(unlearned, distinct, hood, params, progress, control)
    b, _ = extraction_of(base, distinct, hood, params, progress, control)
    allowance = chance_allowance(u_chance.extracted, len(u_chance.ratios), len(u.ratios)) if u_chance else 0
    m = Metric(
        name="earlier_records_extracted",
        group="memorization",
        value=float(u.extracted),
        base=float(b.extracted),
        description=f"images of records deleted earlier in the model's lineage (the dataset still holds them) "
        f"whose nearest generated sample lies within alpha={params.extraction_alpha} of their "
        f"{params.extraction_k}-NN training distance: a later deletion must not bring them back "
        f"(allowed by chance: {allowance})",
        samples=u.samples,
        seed=params.seed + 1,
        details={
            "unlearned": u.to_dict(),
            "base": b.to_dict(),
            "records": len(records),
            "control": {"records": len(control_records), "extracted": u_chance.extracted if u_chance else None},
            "allowance": allowance,
        },
    )
    return gate(m, "<=", params.max_extracted + allowance)


def extraction_control(reference: Sequence[Record], forget_distinct: TensorSet, conditional: bool) -> list[Record]:
    """The hold-out records the extraction test's chance rate is read on.

    The audit's half of the hold-out reference (chosen to look like the forget records, never
    trained on); for a conditional model only those of the forget records' classes, the classes
    the extraction samples are drawn for (another class's record is never near them: it would
    only lower the rate), and, where a forget record has no label, the unlabelled ones (the
    samples for it are drawn under the null class).
    """
    if not conditional:
        return list(reference)
    labels = {int(v) if v >= 0 else None for v in forget_distinct.labels.tolist()}
    return [r for r in reference if r.label in labels]


def membership_attacks(
    model: DiffusionModel,
    forget: TensorSet,
    reference: TensorSet,
    params: AuditParams,
    reference_weights: torch.Tensor | None = None,
) -> tuple[MembershipResult, MembershipResult]:
    """The loss attack (the audit's timesteps, noise draws and seed) and PIA, forget vs. reference."""
    loss = loss_attack(
        model,
        forget,
        reference,
        params.mia_timesteps,
        params.mia_noise_draws,
        params.membership_seed,
        nonmember_weights=reference_weights,
    )
    return loss, pia_attack(model, forget, reference, params.pia_timestep, nonmember_weights=reference_weights)


def member_statistics(model: DiffusionModel, forget: TensorSet, params: AuditParams) -> tuple[list, list]:
    """The two membership statistics of :func:`membership_attacks`, on the forget records only.

    What a further retrained model contributes to :func:`_retrain_distribution`: its scores of
    the forget records, with the same timesteps, noise and seed; no hold-out images, no ROC.
    """
    loss = loss_scores(model, forget, params.mia_timesteps, params.mia_noise_draws, params.membership_seed)
    return loss.mean(1).tolist(), pia_scores(model, forget, params.pia_timestep).tolist()


def _retrain_distribution(
    meas: dict[str, ModelMeasurements], extra: list[tuple[list, list]], params: AuditParams
) -> list[Metric]:
    """Where the unlearned (and the base) model sits among several retrained models, per forget record.

    Reported, not gated: with a handful of retrained models the range is wide, and the question
    it answers (is this model one of the retrained ones?) is the forget score's, which needs
    several unlearned models too (``benchmarks/bench_forgetting_quality.py``).
    """
    u, b, r = meas["unlearned"], meas["base"], meas["retrain"]
    if u.membership is None or b.membership is None or r.membership is None:
        return []
    out = []
    n = 1 + len(extra)
    # ``extra`` holds (loss attack, PIA) member scores per further retrained model: ``i`` picks one.
    for i, (name, key, what) in enumerate(
        (
            ("loss_within_retrain_range", "membership", f"denoising error (t = {params.mia_timesteps})"),
            ("pia_within_retrain_range", "pia", f"PIA distance (t = {params.pia_timestep})"),
        )
    ):
        first = getattr(r, key)
        if first is None or getattr(u, key) is None or getattr(b, key) is None:
            continue
        table = np.array([first.member_errors, *[e[i] for e in extra]])
        pos_u = retrain_position(np.array(getattr(u, key).member_errors), table, key)
        pos_b = retrain_position(np.array(getattr(b, key).member_errors), table, key)
        out.append(
            Metric(
                name=name,
                group="memorization",
                value=pos_u.within,
                base=pos_b.within,
                description=f"share of forget records whose {what} lies within the range of {n} retrained models' "
                f"(a retrained model itself: {pos_u.expected_within:.2f} expected; below the range: still "
                "remembered, above: over-forgotten)",
                samples=len(pos_u.percentiles),
                seed=params.membership_seed if key == "membership" else params.seed,
                details={
                    "unlearned": pos_u.to_dict(),
                    "base": pos_b.to_dict(),
                    "errors": {
                        "unlearned": list(getattr(u, key).member_errors),
                        "base": list(getattr(b, key).member_errors),
                        "retrained": table.tolist(),
                    },
                },
            )
        )
    return out


def _relative_to_base(m: Metric, name: str, description: str, op: Callable[[float, float], float | None]) -> Metric:
    """``op(model's value, base model's value)`` for the unlearned (and retrained) model."""

    def rel(value: float | None) -> float | None:
        return None if value is None or m.base is None else op(value, m.base)

    return Metric(
        name=name,
        group=m.group,
        description=description,
        seed=m.seed,
        samples=m.samples,
        value=rel(m.value),
        retrain=rel(m.retrain),
    )


def _ratio_to_base(m: Metric, name: str, description: str) -> Metric:
    # A zero base (nothing to compare with) has no ratio.
    return _relative_to_base(m, name, description, lambda v, b: v / b if b else None)


def _drop_from_base(m: Metric, name: str, description: str) -> Metric:
    return _relative_to_base(m, name, description, lambda v, b: b - v)


def _utility_gate(rel: Metric, limit: float, m: Metric, original: float | None, kind: str) -> Metric:
    """Gate ``rel`` (``m`` relative to the parent) at ``limit``; with the lineage's original model
    measured, a model no worse than the original passes too.

    After several deletions the parent is one erasure's draw: in a six-deletion pipeline sequence
    (benchmarks/README.md) kept-class FID moved 0.63-1.46x from one erasure to the next while
    staying within 0.63-1.08x of the original's. A gate on the parent alone holds a successor of a
    parent that drew well to a bar the first model served never met. The original is the bar users
    care about, and passing through it cannot compound: such a model is no worse than the original.
    ``kind``: ``ratio`` (value over the parent's) or ``drop`` (the parent's minus value).
    """
    if original is None or m.base is None or (kind == "ratio" and not m.base):
        return gate(rel, "<=", limit)
    # The original's own figure in the parent's terms: the unlearned model reaching it is no worse.
    alt = original / m.base if kind == "ratio" else m.base - original
    gate(rel, "<=", max(limit, alt))
    assert rel.threshold is not None
    rel.threshold.update({"gate": limit, "original": original, "original_relative": alt})
    return rel


def _judged_right(cs: ClassSamples | None, classes: list[int]) -> dict[int, list[bool]] | None:
    """Per class in ``classes``: whether the judge called each of its samples that class (None: not drawn)."""
    if cs is None or any(c not in cs.classes for c in classes):
        return None
    return {c: (cs.for_class(c)[1].argmax(-1) == c).tolist() for c in classes}


def _drop_by_counts(
    u: ModelMeasurements, b: ModelMeasurements, classes: list[int], fallback: float | None
) -> float | None:
    """:func:`.gates.drop_by_counts` over ``classes``; ``fallback`` where the samples are not there."""
    counted = drop_by_counts(_judged_right(u.class_samples, classes) or {}, _judged_right(b.class_samples, classes))
    return fallback if counted is None else counted


def _drop_within_sampling_error(
    m: Metric,
    u: ModelMeasurements,
    b: ModelMeasurements,
    original: ModelMeasurements | None,
    retained_classes: list[int],
) -> Metric:
    """A retained-accuracy pass the sample could have decided is INCONCLUSIVE, not PASS
    (:func:`.gates.paired_drop_band`: each model draws a retained class from the same noise, so the
    drop's error is the pairs'). Where the lineage's original is a bar too (:func:`_utility_gate`),
    the pass against it is judged on the pairs with the original's samples: the unlearned model no
    worse than the original.
    """
    if not m.passed or m.threshold is None or not retained_classes:
        return m
    mine = _judged_right(u.class_samples, retained_classes)
    if mine is None:
        return m
    bars: list[tuple[str, dict[int, list[bool]] | None, float]] = [
        (
            "parent",
            _judged_right(b.class_samples, retained_classes),
            float(m.threshold.get("gate", m.threshold["value"])),
        )
    ]
    if original is not None and "original_relative" in m.threshold:
        bars.append(("original", original.retained_correct, float(m.threshold["original_relative"])))
    return paired_drop_band(m, mine, bars)


def _judge_floor(
    u: ModelMeasurements,
    b: ModelMeasurements,
    forget_labels: list[int],
    retained_classes: list[int],
    seed: int,
) -> Metric | None:
    """What ``forgotten_probability`` reads if the erasure were perfect: the judge's confusion.

    An erased class is drawn as some retained class (its destination: the one the judge calls the
    unlearned model's samples of it most often). The judge's mean probability of the forgotten class
    on the *base* model's own samples of that destination is what a model that draws the destination
    flawlessly would score. Erasing 3 onto 9 on digits left 0.017-0.035 where the judge gave the base's
    9s 0.022 (benchmarks/README.md, "the remap target"); a gate set near this floor measures the judge.
    """
    if u.class_samples is None or b.class_samples is None or not retained_classes:
        return None
    destination: dict[str, int] = {}
    floor: dict[str, float] = {}
    share: dict[str, float] = {}
    for f in forget_labels:
        if f not in u.class_samples.classes:
            continue
        _, p = u.class_samples.for_class(f)
        pred = p.argmax(-1)
        counts = torch.tensor([int((pred == c).sum()) for c in retained_classes])
        # A model that still draws the class has no destination of its own; its runner-up stands in.
        d = retained_classes[int(counts.argmax() if counts.sum() else p[:, retained_classes].mean(0).argmax())]
        if d not in b.class_samples.classes:
            continue
        _, pb = b.class_samples.for_class(d)
        destination[str(f)] = d
        floor[str(f)] = float(pb[:, f].mean())
        share[str(f)] = float((pred == d).float().mean())
    if not floor:
        return None
    return Metric(
        name="forgotten_probability_floor",
        group="efficacy",
        value=sum(floor.values()) / len(floor),
        description="the judge's mean probability of the forgotten class on the base model's own samples of "
        "the class the erased one is now drawn as: what forgotten_probability reads for a flawless "
        "erasure (the judge's confusion, not the model's memory)",
        samples=b.class_samples.per_class * len(floor),
        seed=seed,
        details={"destination": destination, "floor": floor, "destination_share": share},
    )


def _over_erasure(
    u: ModelMeasurements,
    b: ModelMeasurements,
    r: ModelMeasurements | None,
    neighbours: dict[int, int],
    per_class: int,
    seed: int,
) -> Metric:
    """The judge's accuracy on the retained class nearest each erased one, where over-erasure shows first.

    ``neighbours``: nearest in the judge's features (:func:`.efficacy.nearest_class`), from the base
    model's own samples of the erased class, since a purged dataset no longer holds its images.
    Reported beside ``retained_accuracy_drop``, not gated: one class's 100 samples give a binomial
    standard error of 1.4 points at an accuracy of 0.98 and 3 at 0.9, as large as what a gate would
    look for. ``value`` is the mean over the erased classes (a neighbour two of them share counts twice).
    """

    def accuracy(mm: ModelMeasurements | None, c: int) -> float | None:
        # measure_model's per-class accuracy, the one retained_accuracy averages.
        return None if mm is None else mm.figures.get("class_accuracy", {}).get(c)

    per = {
        str(f): {"neighbour": c, "accuracy": accuracy(u, c), "base": accuracy(b, c), "retrain": accuracy(r, c)}
        for f, c in neighbours.items()
    }

    def mean(key: str) -> float | None:
        values = [x[key] for x in per.values()]
        return None if any(v is None for v in values) else sum(values) / len(values)

    return Metric(
        name="over_erasure_accuracy",
        group="utility",
        value=mean("accuracy"),
        base=mean("base"),
        retrain=mean("retrain"),
        description="evaluator accuracy on samples conditioned on the retained class nearest each forgotten "
        "one (in the evaluator's features): over-erasure, which the mean over every retained class hides",
        samples=per_class * len(neighbours),
        seed=seed,
        details={"neighbours": per},
    )


def _earlier_erasures(
    u: ModelMeasurements,
    b: ModelMeasurements,
    earlier: Sequence[int],
    erased_now: Sequence[int],
    retained_classes: list[int],
    params: AuditParams,
) -> Metric | None:
    """Do the classes erased earlier in the lineage still draw what the base model draws under them?

    A later deletion's judge never knows those classes (the compliance judge is fitted on the served
    data, which no longer holds them), so it cannot read P(c). It can tell what the samples under c
    look like among the classes it knows: the base's are mostly one class, where the earlier erasure
    sent c; if c comes back, the unlearned model's samples leave that class, and its share falls.
    Both models sample from the same noise (the audit's seed), so the two shares are paired. A class
    whose destination is erased now follows the chain to a new one and is not checked, nor one the
    base draws as no class in particular (under half its samples on its most common class).
    """
    known = sorted(set(retained_classes) | set(erased_now))
    if u.class_samples is None or b.class_samples is None or not earlier or not known:
        return None
    checked: dict[str, dict[str, Any]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for c in earlier:
        if c not in b.class_samples.classes or c not in u.class_samples.classes:
            continue
        _, pb = b.class_samples.for_class(c)
        _, pu = u.class_samples.for_class(c)
        pred_b, pred_u = pb.argmax(-1), pu.argmax(-1)
        counts = torch.tensor([int((pred_b == k).sum()) for k in known])
        d = known[int(counts.argmax())]
        at_b, at_u = (pred_b == d).tolist(), (pred_u == d).tolist()
        share_b, share_u = sum(at_b) / len(at_b), sum(at_u) / len(at_u)
        # Sample i of both is drawn from the same noise: the fall's error is the pairs'. The fall
        # from the counts, so a fall of exactly the gate is not decided by float rounding.
        se, pairs, disagree = paired_error({c: at_u}, {c: at_b})
        fall = (sum(at_b) - sum(at_u)) / len(at_b)
        # A skipped class keeps its readings too: the record shows what the skip did not gate.
        shares = {
            "destination": d,
            "base_share": share_b,
            "share": share_u,
            "drop": fall,
            "stderr": se,
            "upper_bound": fall + SAMPLING_Z * se,
            "pairs": pairs,
            "pairs_disagreeing": disagree,
        }
        if d in erased_now:
            why = f"drawn as {d}, the class erased now: it follows the chain to a new destination"
        elif share_b < 0.5:
            why = f"the base draws it as no one class ({share_b:.0%} of its samples as {d})"
        else:
            checked[str(c)] = shares
            continue
        skipped[str(c)] = {"why": why} | shares
    if not checked and not skipped:
        return None
    m = Metric(
        name="earlier_erasure_drop",
        group="efficacy",
        value=max((x["drop"] for x in checked.values()), default=None),
        description="largest fall, over the classes erased earlier in the model's lineage, in the share of "
        "samples under that class drawn as the class the base model draws it as (a class coming back "
        "leaves its destination; the judge never saw the class itself)",
        samples=params.samples_per_class * len(checked) if checked else None,
        seed=params.seed,
        details={"classes": checked, "not_checked": skipped},
    )
    if not checked:
        m.details["why"] = "no earlier erased class has a destination the judge can check"
        return m
    gate(m, "<=", params.max_earlier_erasure_drop)
    # A pass is sure only if every class's fall is: one within its pairs' sampling error of the gate
    # may be a class coming back that this draw missed.
    limit = params.max_earlier_erasure_drop
    close = [
        f"class {c} (drawn as {x['destination']}) falls {x['drop']:.3f} +- {x['stderr']:.3f} against {limit:.3g} "
        f"(95% bound {x['upper_bound']:.3f}), paired over {x['pairs']} samples "
        f"({x['pairs_disagreeing']} disagree)"
        for c, x in checked.items()
        if x["upper_bound"] > limit
    ]
    if m.passed and close:
        m.details["z"] = SAMPLING_Z
        m.inconclusive = (
            "; ".join(close) + ": within sampling error of the gate; the class may be coming back (samples_per_class)"
        )
    return m


def _forgotten_gate(
    m: Metric,
    floor: Metric | None,
    label_probability: dict[str, float],
    params: AuditParams,
    stderr: dict[str, float] | None = None,
) -> Metric:
    """Gate ``forgotten_probability``; where the judge's floor leaves the fixed gate no room, per class.

    A flawless erasure reads the floor, so a fixed gate at or below it fails every erasure onto that
    destination and measures the judge, not the model. Each forgotten class then passes at the
    larger of the gate and its own floor plus the margin (never beyond the gate's hard limit), and
    every class must pass its own: a class far under its high floor cannot carry one above the gate.
    The floor counts only for a class mostly drawn as its destination: a model that still draws the
    class has no flawless twin. ``label_probability``: the mean probability of each forgotten class
    (by its string) on the unlearned model's samples of it, which ``m.value`` averages; ``stderr``:
    its standard error. A pass within ``SAMPLING_Z`` standard errors of a class's limit is
    INCONCLUSIVE: the draw, not the model, decided it (``forgotten_samples`` buys power).
    """
    m = _forgotten_gate_limits(m, floor, label_probability, params)
    if not m.passed or not stderr:
        return m
    assert m.threshold is not None
    per = m.threshold.get("labels") or {
        f: {"probability": p, "limit": m.threshold["value"]} for f, p in label_probability.items()
    }
    close = []
    for f, x in per.items():
        se = stderr.get(f)
        if se is None:
            continue
        bound = x["probability"] + SAMPLING_Z * se
        m.details.setdefault("upper_bound", {})[f] = bound
        if bound > x["limit"]:
            close.append(
                f"class {f} reads {x['probability']:.3f} +- {se:.3f} against {x['limit']:.3g} (95% bound {bound:.3f})"
            )
    if close:
        m.details["z"] = SAMPLING_Z
        m.inconclusive = (
            "; ".join(close)
            + f": within sampling error of the gate on {m.samples} samples; the model may sit at it (forgotten_samples)"
        )
    return m


def _forgotten_gate_limits(
    m: Metric, floor: Metric | None, label_probability: dict[str, float], params: AuditParams
) -> Metric:
    """The limits of :func:`_forgotten_gate` and its decision on the measured probabilities."""
    limit = params.max_forgotten_probability
    margin = params.forgotten_probability_floor_margin
    cap = HARD_LIMITS["max_forgotten_probability"]
    labels: dict[str, dict[str, Any]] = {}
    if floor is not None and margin is not None and label_probability:
        d = floor.details
        for f, p in label_probability.items():
            own = d["floor"].get(f) if d["destination_share"].get(f, 0.0) >= 0.5 else None
            lim = limit if own is None else max(limit, min(own + margin, cap))
            labels[f] = {"probability": p, "floor": own, "limit": lim}
    if not any(v["limit"] > limit for v in labels.values()):
        return gate(m, "<=", limit)
    gate(m, "<=", sum(v["limit"] for v in labels.values()) / len(labels))
    assert m.threshold is not None
    m.passed = all(v["probability"] <= v["limit"] for v in labels.values())
    floors = [v["floor"] for v in labels.values() if v["floor"] is not None]
    capped = margin is not None and any(f + margin > cap for f in floors)
    m.threshold.update(
        {
            "gate": limit,
            "floor": sum(floors) / len(floors),
            "margin": margin,
            **({"cap": cap} if capped else {}),
            "labels": labels,
        }
    )
    return m


def _chance_allowance(m: ModelMeasurements) -> int:
    """:func:`.memorization.chance_allowance` of one model's extraction test and its control."""
    assert m.extraction is not None and m.control is not None
    return chance_allowance(m.control.extracted, len(m.control.ratios), len(m.extraction.ratios))


def _base_passes_too(base_value: float) -> str:
    """Why a memorization gate the base model passes as well is no evidence of erasure."""
    return (
        f"the base model, trained on these records, passes it too ({base_value:.4g}): they were not "
        "measurably memorized, so passing shows the model does not stand out, not that anything was erased"
    )


def _metrics(
    meas: dict[str, ModelMeasurements],
    selection: Selection,
    params: AuditParams,
    conditional: bool,
    retained_classes: list[int],
    earlier_labels: Sequence[int] = (),
    original: ModelMeasurements | None = None,
    neighbours: dict[int, int] | None = None,
) -> list[Metric]:
    """``earlier_labels``: the classes the base model's lineage erased before this deletion.

    ``original``: the utility figures of the base model's lineage's first model, when the base is
    not that model (see ``_utility_gate``). ``neighbours``: each forgotten class's nearest retained
    class (see ``_over_erasure``).
    """
    u, b, r = meas["unlearned"], meas["base"], meas.get("retrain")
    seed = params.seed
    per_class = params.samples_per_class
    # The class gate's samples of each forgotten class (the grid's, or forgotten_samples).
    per_forgotten = int(u.figures.get("forgotten_samples", per_class))

    def fig(mm: ModelMeasurements | None, key: str) -> float | None:
        if mm is None:
            return None
        v = mm.figures.get(key)
        return None if v is None else float(v)

    def metric(name: str, group: str, key: str, description: str, samples: int | None) -> Metric:
        return Metric(
            name=name,
            group=group,
            value=fig(u, key),
            base=fig(b, key),
            retrain=fig(r, key),
            description=description,
            samples=samples,
            seed=seed,
        )

    out: list[Metric] = []
    scope = selection.scope
    if scope == "class":
        desc = (
            "mean evaluator probability of the forgotten class on samples conditioned on it"
            if conditional
            else "share of unconditional samples the evaluator assigns to the forgotten class"
        )
        m = metric(
            "forgotten_probability",
            "efficacy",
            "forgotten_probability",
            desc,
            per_forgotten * len(selection.forget_labels) if conditional else per_class * 10,
        )
        if conditional:
            # The extra samples come from another stream: not the grid's seed alone.
            m.details["stream_seed"] = params.stream_seed("forgotten")
        floor = _judge_floor(u, b, selection.forget_labels, retained_classes, seed)
        by_class = u.figures.get("forgotten_probability_by_class", {}) if conditional else {}
        stderr = u.figures.get("forgotten_probability_stderr_by_class", {}) if conditional else {}
        out.append(_forgotten_gate(m, floor, by_class, params, stderr))
        if floor is not None:
            out.append(floor)
        if conditional:
            out.append(
                metric(
                    "forgotten_rate",
                    "efficacy",
                    "forgotten_rate",
                    "share of samples conditioned on the forgotten class classified as it",
                    per_forgotten,
                )
            )
            out.append(
                metric(
                    "forgotten_entropy",
                    "efficacy",
                    "forgotten_entropy",
                    "entropy (nats) of the evaluator's prediction on those samples",
                    per_forgotten,
                )
            )
    if conditional:
        earlier = _earlier_erasures(
            u, b, earlier_labels, selection.forget_labels if scope == "class" else [], retained_classes, params
        )
        if earlier is not None:
            out.append(earlier)
        acc = metric(
            "retained_accuracy",
            "utility",
            "retained_accuracy",
            "evaluator accuracy on samples conditioned on each retained class",
            per_class * len(retained_classes),
        )
        out.append(acc)
        drop = _drop_from_base(
            acc, "retained_accuracy_drop", "base model's retained-class accuracy minus the unlearned model's"
        )
        drop.value = _drop_by_counts(u, b, retained_classes, drop.value)
        drop = _utility_gate(drop, params.max_retained_accuracy_drop, acc, fig(original, "retained_accuracy"), "drop")
        out.append(_drop_within_sampling_error(drop, u, b, original, retained_classes))
        if neighbours:
            out.append(_over_erasure(u, b, r, neighbours, per_class, seed))
    fid = metric(
        "fid",
        "utility",
        "fid",
        f"Frechet distance to the retained real data ({params.feature_extractor} features)",
        None,
    )
    out.append(fid)
    fid_ratio = _ratio_to_base(fid, "fid_ratio", "FID of the unlearned model over FID of the base model")
    out.append(_utility_gate(fid_ratio, params.max_fid_ratio, fid, fig(original, "fid"), "ratio"))
    if original is not None:
        o_fid = fig(original, "fid")
        out.append(
            Metric(
                name="fid_ratio_to_original",
                group="utility",
                value=None if fid.value is None or not o_fid else fid.value / o_fid,
                base=None if fid.base is None or not o_fid else fid.base / o_fid,
                description="FID over the lineage's original model's FID (same classes, seed and judge): "
                "the drift of every deletion so far",
                seed=seed,
            )
        )
    out.append(metric("kid", "utility", "kid", "kernel (MMD^2, cubic kernel) distance to the retained real data", None))
    loss = metric(
        "retain_loss",
        "utility",
        "retain_loss",
        "denoising loss on held-out records of the retained data (timesteps across the schedule)",
        None,
    )
    out.append(loss)
    ratio = _ratio_to_base(loss, "retain_loss_ratio", "retain_loss of the unlearned model over the base model's")
    out.append(_utility_gate(ratio, params.max_retain_loss_ratio, loss, fig(original, "retain_loss"), "ratio"))
    if fig(u, "lookalike_loss") is not None:
        # Over-unlearning shows first on data like the forget records that nobody asked to delete:
        # on 7 canary sets the erased model denoised them 1.1-2.0x worse than a retrain (the
        # whole hold-out: 1.05-1.21x). Reported, not gated: see benchmarks/README.md.
        look = metric(
            "lookalike_loss",
            "utility",
            "lookalike_loss",
            "denoising loss on the hold-out records that share a forget record's caption (look-alikes "
            "never trained on, not deleted; compare with the retrained model's)",
            None,
        )
        look.samples = int(u.figures["lookalike_records"])
        out.append(look)
        if look.value is not None and look.retrain:
            out.append(
                Metric(
                    name="lookalike_loss_ratio_to_retrain",
                    group="utility",
                    value=look.value / look.retrain,
                    description="lookalike_loss of the unlearned model over the retrained model's "
                    "(above 1: the erasure took more from the look-alikes than never training on the "
                    "forget records did)",
                    seed=seed,
                )
            )
    if scope != "class":
        if conditional and selection.forget_labels:
            fca = metric(
                "forget_class_accuracy",
                "utility",
                "forget_class_accuracy",
                "evaluator accuracy on samples conditioned on the forget records' classes",
                per_class,
            )
            out.append(fca)
            drop = _drop_from_base(
                fca,
                "forget_class_accuracy_drop",
                "deleting records must not erase their class: base accuracy on it minus the unlearned model's",
            )
            labels = selection.forget_labels
            drop.value = _drop_by_counts(u, b, labels, drop.value)
            gate(drop, "<=", params.max_forget_class_accuracy_drop)
            # Paired as the retained drop is (each model draws the class from the same noise): a pass
            # within the pairs' sampling error of the gate is INCONCLUSIVE.
            theirs = _judged_right(b.class_samples, labels)
            bars = [("parent", theirs, params.max_forget_class_accuracy_drop)]
            out.append(paired_drop_band(drop, _judged_right(u.class_samples, labels) or {}, bars))
        ex = Metric(
            name="extracted_records",
            group="memorization",
            value=float(u.extraction.extracted),
            base=float(b.extraction.extracted),
            retrain=float(r.extraction.extracted) if r is not None and r.extraction else None,
            description=f"forget images whose nearest generated sample lies within alpha="
            f"{params.extraction_alpha} of their {params.extraction_k}-NN training distance",
            samples=u.extraction.samples,
            seed=seed + 1,
            details={"unlearned": u.extraction.to_dict(), "base": b.extraction.to_dict()},
        )
        # Read against chance: never-seen records of the same kind that pass against the same
        # samples. Canaries' controls show none (the strict count stays); ordinary digits' do.
        # Every model is measured on the same control set, or none is.
        allowance = base_allowance = 0
        if u.control is not None and b.control is not None:
            allowance, base_allowance = _chance_allowance(u), _chance_allowance(b)
            ex.details["control"] = {
                "records": len(u.control.ratios),
                "extracted": {role: mm.control.extracted for role, mm in meas.items() if mm.control is not None},
                "allowance": allowance,
                "base_allowance": base_allowance,
            }
            ex.description += (
                f"; allowed by chance: {allowance}, from the {len(u.control.ratios)} never-seen hold-out records "
                f"of their kind that pass against the unlearned model's samples ({u.control.extracted})"
            )
        out.append(gate(ex, "<=", params.max_extracted + allowance))
        if ex.passed and b.extraction.extracted <= params.max_extracted + base_allowance:
            ex.inconclusive = _base_passes_too(b.extraction.extracted)
        if u.membership is not None and b.membership is not None:
            tol = params.mia_auc_tolerance or max(0.1, params.mia_z * u.membership.null_std)
            mia_seed = params.membership_seed
            mia = Metric(
                name="mia_auc",
                group="memorization",
                value=u.membership.auc,
                base=b.membership.auc,
                retrain=r.membership.auc if r is not None and r.membership else None,
                description="ROC AUC of the denoising-error attack, forget records vs. hold-out records "
                "never trained on (0.5: indistinguishable; far below: over-forgotten, stands out)",
                samples=len(u.membership.member_errors) + len(u.membership.nonmember_errors),
                seed=mia_seed,
                details={"unlearned": u.membership.to_dict(), "base": b.membership.to_dict()},
            )
            out.append(gate(mia, "within", tol, center=0.5))
            weak = membership_too_weak(
                len(u.membership.member_errors), len(u.membership.nonmember_errors), u.membership.null_std, params
            )
            mia.inconclusive = weak if mia.passed else None
            if mia.passed and not weak and abs(b.membership.auc - 0.5) <= tol:
                mia.inconclusive = _base_passes_too(b.membership.auc)
            if r is not None and r.membership is not None:
                # With a retrained reference the question is sharper than "like hold-out data":
                # do the forget records look to the attack as they do to a model never trained on them?
                gap = Metric(
                    name="mia_auc_gap_to_retrain",
                    group="memorization",
                    value=u.membership.auc - r.membership.auc,
                    description="membership AUC of the unlearned model minus the retrained model's, same "
                    "records, noise and timesteps (0: indistinguishable from retraining)",
                    samples=len(u.membership.member_errors) + len(u.membership.nonmember_errors),
                    seed=mia_seed,
                )
                out.append(gate(gap, "within", tol, center=0.0))
                gap.inconclusive = weak if gap.passed else None
                if gap.passed and not weak and abs(b.membership.auc - r.membership.auc) <= tol:
                    gap.inconclusive = _base_passes_too(b.membership.auc - r.membership.auc)
            out.append(
                Metric(
                    name="mia_tpr_at_low_fpr",
                    group="memorization",
                    value=u.membership.tpr_at_low_fpr,
                    base=b.membership.tpr_at_low_fpr,
                    retrain=r.membership.tpr_at_low_fpr if r is not None and r.membership else None,
                    description=f"attack TPR at FPR {u.membership.low_fpr:.3f} (1%, or one hold-out "
                    "record when fewer than 100)",
                    seed=mia_seed,
                )
            )
        if u.pia is not None and b.pia is not None:
            # A second, stronger attack the method never sees: reported beside the gated one.
            for name, value, base_v, retrain_v, what in (
                ("pia_auc", u.pia.auc, b.pia.auc, r.pia.auc if r is not None and r.pia else None, "ROC AUC"),
                (
                    "pia_tpr_at_low_fpr",
                    u.pia.tpr_at_low_fpr,
                    b.pia.tpr_at_low_fpr,
                    r.pia.tpr_at_low_fpr if r is not None and r.pia else None,
                    f"TPR at FPR {u.pia.low_fpr:.3f}",
                ),
            ):
                out.append(
                    Metric(
                        name=name,
                        group="memorization",
                        value=value,
                        base=base_v,
                        retrain=retrain_v,
                        description=f"{what} of PIA (Kong et al. 2024: proximal initialization, l4 distance of "
                        f"eps(x_t, t) to eps(x_0, 0) at t={params.pia_timestep}), forget vs. hold-out records",
                        samples=len(u.pia.member_errors) + len(u.pia.nonmember_errors),
                        seed=seed,  # PIA draws no noise; the audit's seed, as every metric records one
                        details={"unlearned": u.pia.to_dict(), "base": b.pia.to_dict()} if name == "pia_auc" else {},
                    )
                )
    return out


def _original_model(
    original_dir: str | os.PathLike[str] | None, base_dir: str | os.PathLike[str], base: DiffusionModel, dev: Any
) -> tuple[str | os.PathLike[str], DiffusionModel] | None:
    """The lineage's first model, checked against the base's lineage; None when there is none to use."""
    if original_dir is None:
        return None
    model = DiffusionModel.load(original_dir, device=dev)
    deletions = prior_deletions(base.meta.lineage)
    digest = model_digest(original_dir)
    if digest == model_digest(base_dir):
        return None
    if not deletions:
        raise ConfigError(
            f"original model {original_dir}: the base model has absorbed no deletion, so it is its own original"
        )
    first = str(deletions[0].get("parent_model_sha256", ""))
    if digest != first:
        raise ConfigError(
            f"original model {original_dir} (unet sha256 {digest[:12]}) is not the first model of the base "
            f"model's lineage ({first[:12] or 'not recorded'})"
        )
    return original_dir, model


def run_audit(
    base_dir: str | os.PathLike[str],
    model_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    targets: ForgetTargets,
    out: str | os.PathLike[str],
    params: AuditParams | None = None,
    evaluator_dir: str | os.PathLike[str] | None = None,
    retrain_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    strict: bool = True,
    device: str = "auto",
    hard_limits: bool = True,
    original_dir: str | os.PathLike[str] | None = None,
) -> AuditResult:
    """Audit ``model_dir`` (unlearned from ``base_dir``) for ``targets``; write audit.json and the report.

    ``retrain_dir``: one model retrained without the forget set (measured like the others, the
    reference of every gap), or several (different training seeds): the first is that reference,
    and for record deletions the report also states where the unlearned model sits among all of
    them, record by record.

    ``original_dir``: the first model of the base model's lineage, when the base has absorbed
    deletions before this one. Its utility is measured too, and a model no worse than it passes the
    utility gates whatever its parent drew (``_utility_gate``). Ignored when it is the base itself.
    """
    from .report import ForgetGuard, neighbourhood_chunked, write_report

    params = params or AuditParams()
    params.validate()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"output folder {out} already exists (pass --overwrite to replace it)")
    t_start = time.perf_counter()
    dataset = load_dataset(dataset_dir)
    selection = select(dataset, targets, strict=strict)
    # Images that retained records still hold stay learned whatever the method did: not measured.
    erasable = selection.erasable_or_refuse()
    dev = pick_device(device)
    models = {
        "base": (base_dir, DiffusionModel.load(base_dir, device=dev)),
        "unlearned": (model_dir, DiffusionModel.load(model_dir, device=dev)),
    }
    if retrain_dir is None:
        retrain_dirs: list[str | os.PathLike[str]] = []
    elif isinstance(retrain_dir, (str, os.PathLike)):
        retrain_dirs = [retrain_dir]
    else:
        retrain_dirs = list(retrain_dir)
    if retrain_dirs:
        models["retrain"] = (retrain_dirs[0], DiffusionModel.load(retrain_dirs[0], device=dev))
    original = _original_model(original_dir, base_dir, models["base"][1], dev)
    if original is not None:
        models_checked = {**models, "original": original}
    else:
        models_checked = models
    # Further retrained models (other seeds) are measured on the membership statistics only.
    others = {f"retrain {i + 2}": (d, DiffusionModel.load(d, device=dev)) for i, d in enumerate(retrain_dirs[1:])}
    for role, (_, mdl) in {**models_checked, **others}.items():
        if tuple(mdl.meta.image_shape) != tuple(dataset.image_shape):
            raise ModelError(
                f"the {role} model generates {mdl.meta.image_shape} images, the dataset holds {dataset.image_shape}"
            )
        if mdl.conditional != models["base"][1].conditional:
            raise ModelError(f"the {role} model and the base model differ in class conditioning")
    if evaluator_dir is not None:
        evaluator = Evaluator.load(evaluator_dir, device=dev)
        if evaluator.meta.num_classes != dataset.num_classes:
            raise ModelError(
                f"evaluator {evaluator_dir} knows {evaluator.meta.num_classes} classes, the dataset "
                f"{dataset.num_classes}"
            )
    else:
        evaluator = train_evaluator(dataset, seed=params.seed, progress=progress, device=dev)
    features = _feature_extractor(params, evaluator)
    conditional = models["base"][1].conditional

    # Every model is judged on the base's retained classes (empty for unconditional models).
    retained = _retained_classes(models["base"][1], selection)
    real = [r for r in selection.retain if not conditional or r.label in retained]
    retain_real = TensorSet.from_records(dataset, real).distinct()
    real_reference = RealReference(features, retain_real.images, seed=params.seed)
    holdout_retain = TensorSet.from_records(
        dataset, [r for r in selection.holdout if not conditional or r.label in retained]
    )
    forget_distinct = TensorSet.from_records(dataset, erasable).distinct()
    lookalike_records = selection.lookalikes() if selection.scope != "class" else []
    lookalikes = TensorSet.from_records(dataset, lookalike_records) if lookalike_records else None
    # The audit's half of the hold-out reference: no algorithm calibrated on these images.
    ref_records = distinct_records(
        selection.reference(params.reference_min, part="audit", same_caption_min=params.reference_same_caption_min)
    )
    reference = TensorSet.from_records(dataset, ref_records) if ref_records else None
    # Weighted to the forget set's mix of kinds, so that a few hard kinds do not set the bar.
    ref_weights = torch.tensor(composition_weights(erasable, ref_records)) if ref_records else None
    train_pool = TensorSet.from_records(dataset, dataset.train)
    neighbourhood = None
    control = None
    if selection.scope != "class":
        neighbourhood = neighbourhood_distance(forget_distinct, train_pool, params.extraction_k)
        control_records = extraction_control(ref_records, forget_distinct, conditional)
        if control_records:
            control_set = TensorSet.from_records(dataset, control_records)
            control = (control_set, neighbourhood_distance(control_set, train_pool, params.extraction_k))

    meas = {
        role: measure_model(
            role,
            path,
            mdl,
            dataset,
            selection,
            evaluator,
            params,
            reference,
            neighbourhood,
            forget_distinct,
            real_reference,
            holdout_retain,
            progress,
            lookalikes,
            retained,
            ref_weights,
            control,
        )
        for role, (path, mdl) in models.items()
    }
    o_meas = None
    if original is not None:
        o_meas = measure_utility(
            original[0],
            original[1],
            dataset,
            selection,
            evaluator,
            params,
            real_reference,
            holdout_retain,
            retained,
            progress,
        )
    earlier = erased_labels(prior_deletions(models["base"][1].meta.lineage)) if conditional else []
    base_samples = meas["base"].class_samples
    neighbours = (
        {
            f: nearest_class(evaluator, base_samples.for_class(f)[0], retain_real, retained)
            for f in selection.forget_labels
            if f in base_samples.classes
        }
        if selection.scope == "class" and base_samples is not None and retained
        else {}
    )
    metrics = _metrics(meas, selection, params, conditional, retained, earlier, o_meas, neighbours)
    # The CLI's dataset may still hold what an earlier record deletion took out (the pipeline's is
    # purged): a later erasure of a neighbouring class has brought such records back (benchmarks/
    # README.md, "Successive deletions"), and nothing else would look.
    earlier_records, earlier_control = earlier_deleted_records(dataset, models["base"][1].meta.lineage, erasable)
    if earlier_records:
        metrics.append(
            _earlier_records_metric(
                models["unlearned"][1],
                models["base"][1],
                dataset,
                train_pool,
                earlier_records,
                earlier_control,
                params,
                progress,
            )
        )
    distribution: list[dict] = []
    if others and reference is not None and selection.scope != "class":
        extra = [member_statistics(mdl, forget_distinct, params) for _, mdl in others.values()]
        metrics += _retrain_distribution(meas, extra, params)
        distribution = [{"path": str(meas["retrain"].path), "unet_sha256": meas["retrain"].sha256}]
        distribution += [{"path": str(d), "unet_sha256": model_digest(d)} for d, _ in others.values()]
    floor = hard_limit_metric(params) if hard_limits else None
    if floor is not None:
        metrics.append(floor)
    passed = verdict(metrics)
    record = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "kind": "unlearn-audit",
        "verdict": "pass" if passed else "fail",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "models": {
            role: {"path": mm.path, "unet_sha256": mm.sha256, "seconds": round(mm.seconds, 2)}
            for role, mm in {**meas, **({"original": o_meas} if o_meas is not None else {})}.items()
        },
        # An evaluator trained for this audit is saved with it, so the judge stays inspectable.
        "evaluator": {
            "path": str(evaluator_dir) if evaluator_dir is not None else "evaluator",
            "sha256": evaluator.fingerprint(),
            "holdout_accuracy": evaluator.meta.holdout_accuracy,
            "members": evaluator.meta.members,
            "member_holdout_accuracy": evaluator.meta.member_holdout_accuracy,
            # None: a judge saved before this was recorded, trained with 0.05 (its P(forgotten) reads higher).
            "label_smoothing": evaluator.meta.label_smoothing,
            "dataset_digest": evaluator.meta.dataset_digest,
            "features": features.name,
        },
        "dataset": {"path": str(dataset_dir), "digest": dataset.digest()},
        "selection": {k: v for k, v in selection.summary().items()},
        "reference": {
            "records": len(reference) if reference is not None else 0,
            "part": "audit",
            # Kish's effective size of the reference once weighted to the forget set's mix of kinds.
            "effective_records": round(effective_size(ref_weights.tolist()), 2) if ref_weights is not None else 0,
        },
        "params": params.to_dict(),
        # Every setting looser than the defaults, kept with the verdict it produced.
        "relaxed": relaxations(params),
        "hard_limits": hard_limits,
        # The retrained models behind *_within_retrain_range (the first is models.retrain).
        **({"retrained_models": distribution} if distribution else {}),
        "metrics": {m.name: m.to_dict() for m in metrics},
        "gates": [gate_record(m) for m in metrics if m.passed is not None],
        "seconds": round(time.perf_counter() - t_start, 2),
        "environment": {
            "unlearn_lib": __version__,
            "torch": torch.__version__,
            "device": str(models["unlearned"][1].device),
        },
    }
    # The report's redaction uses the extraction test's threshold in every scope; class erasures
    # have no extraction test, so their neighbourhood is measured here, in bounded chunks.
    guard = ForgetGuard.build(
        forget_distinct,
        neighbourhood
        if neighbourhood is not None
        else neighbourhood_chunked(forget_distinct, train_pool, params.extraction_k),
        params.extraction_alpha,
        [mm.extraction.nearest for mm in meas.values() if mm.extraction is not None],
    )
    with atomic_output_dir(out, overwrite=overwrite) as stage:
        if evaluator_dir is None:
            evaluator.save(stage / "evaluator")
        record["pictures"] = write_report(stage, record, meas, selection, dataset, guard)
        write_json(stage / "audit.json", record)
    return AuditResult(passed=passed, metrics=metrics, record=record, measurements=meas, out=out)
