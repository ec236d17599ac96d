"""Memorization of specific records: the extraction test and the loss membership attack.

Extraction, after Carlini et al. 2023 ("Extracting Training Data from Diffusion Models"):
generate M samples; for each forget record, the distance to its nearest generated sample
divided by alpha times the mean distance from that record to its k nearest *other*
training images. A record counts as extracted below 1: the model produced something far
closer to it than its natural neighbourhood explains. The distances are computed in
:mod:`unlearn_lib.measures.distances`, which the method's calibrated stop also uses: the audit
imports nothing from the method it judges.

Membership inference, the loss (t-error) attack: records a model trained on are denoised
with lower error than records it never saw. The attack scores forget records against
hold-out records like them (never trained on) by their denoising error at several
timesteps on fixed noise. After unlearning the forget records should look like
non-members: ROC AUC near 0.5. An AUC far *below* 0.5 means the records are now denoised
worse than unseen ones: over-forgotten, they stand out as deleted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from ..data.selection import effective_size
from ..data.tensors import TensorSet, to_model_space
from ..measures.distances import extraction_ratios
from ..measures.distances import flat01 as _flat01  # noqa: F401  (report.py takes it from here)
from ..measures.distances import neighbourhood_distance as neighbourhood_distance  # re-exported: audit's API
from ..models.diffusion import DiffusionModel
from ..models.objectives import ForwardProcess, conditioning, per_sample_denoising_error


@dataclass
class ExtractionResult:
    record_ids: list[str]
    ratios: list[float]
    nearest: torch.Tensor  # [n_forget, C, H, W] uint8: each record's nearest generated sample
    samples: int
    alpha: float
    k: int
    # The classes a conditional model was asked for ("null": its null class, where records without
    # a label were learned); None for an unconditional model.
    labels: list[int | str] | None = None

    @property
    def extracted(self) -> int:
        return sum(r < 1.0 for r in self.ratios)

    def to_dict(self) -> dict:
        return {
            "extracted": self.extracted,
            "records": len(self.ratios),
            "samples": self.samples,
            "alpha": self.alpha,
            "k": self.k,
            "ratios": {rid: round(r, 4) for rid, r in zip(self.record_ids, self.ratios, strict=True)},
            **({"labels": self.labels} if self.labels is not None else {}),
        }


def extraction_test(
    forget: TensorSet, neighbourhood: torch.Tensor, generated: torch.Tensor, alpha: float, k: int
) -> ExtractionResult:
    """``generated``: samples in [-1, 1]; ``neighbourhood``: from :func:`neighbourhood_distance`."""
    near = extraction_ratios(forget.images, neighbourhood, generated, alpha)
    return ExtractionResult(
        record_ids=list(forget.record_ids),
        ratios=near.ratios.tolist(),
        nearest=near.samples_u8[near.index],
        samples=int(generated.shape[0]),
        alpha=alpha,
        k=k,
    )


def chance_allowance(control_hits: int, control_records: int, records: int, level: float = 0.95) -> int:
    """How many of ``records`` may pass the extraction criterion by chance alone.

    The control: hold-out records of the same kind, never trained on, tested against the same
    samples. ``control_hits`` of ``control_records`` passing is the criterion's false-positive rate
    for that kind; the allowance is the ``level`` quantile of Binomial(``records``, that rate).
    A control with no hit does not prove a zero rate, only one below its resolution: at least
    the expected count at Laplace's rate, (hits + 1) / (control + 2), rounded down, is allowed.
    That is 0 wherever the forget set is smaller than its control, so a distinctive kind (the
    digits canaries, whose marked look-alikes are never near a sample) keeps the strict "no
    record extracted"; every seven deleted by caption (about 180 records against a few dozen
    hold-out sevens) may have a few chance hits. On ordinary 8x8 digits 1 of 60 never-seen
    records passes against the original model's 500 samples per class, and a model retrained
    without a random 2% of the records "extracted" 1 of them: the strict count failed the gold
    standard itself.
    """
    if records <= 0 or control_records <= 0:
        return 0
    resolution = math.floor(records * (control_hits + 1) / (control_records + 2))
    if control_hits <= 0:
        return resolution
    from scipy.stats import binom

    return max(resolution, int(binom.ppf(level, records, min(1.0, control_hits / control_records))))


@dataclass
class MembershipResult:
    auc: float
    tpr_at_low_fpr: float
    low_fpr: float  # the FPR the TPR is read at: 1%, or 1/n_nonmembers when fewer points exist
    per_timestep_auc: dict[int, float]
    member_errors: list[float]
    nonmember_errors: list[float]
    fpr: list[float]
    tpr: list[float]
    null_std: float  # std of the AUC under "no membership signal" for these sample sizes
    # The non-members' weights (mean 1) giving them the members' mix of kinds; None: all equal.
    nonmember_weights: list[float] | None = None

    @property
    def nonmembers_effective(self) -> float:
        """Kish's effective number of non-members: what the weighted reference is worth."""
        return _effective_size(self.nonmember_weights, len(self.nonmember_errors))

    def to_dict(self) -> dict:
        return {
            "auc": self.auc,
            "tpr_at_low_fpr": self.tpr_at_low_fpr,
            "low_fpr": self.low_fpr,
            "per_timestep_auc": {str(k): v for k, v in self.per_timestep_auc.items()},
            "members": len(self.member_errors),
            "nonmembers": len(self.nonmember_errors),
            "nonmembers_effective": round(self.nonmembers_effective, 2),
            "null_std": self.null_std,
            "member_error_mean": float(np.mean(self.member_errors)),
            "nonmember_error_mean": float(np.average(self.nonmember_errors, weights=self.nonmember_weights)),
        }


def _effective_size(weights: list[float] | None, n: int) -> float:
    return float(n) if weights is None else effective_size(weights)


def auc_null_std(n_members: int, n_nonmembers: int) -> float:
    """Standard deviation of the ROC AUC when scores carry no signal (Mann-Whitney U)."""
    return math.sqrt((n_members + n_nonmembers + 1) / (12.0 * n_members * n_nonmembers))


def _sample_weight(n_members: int, nonmember_weights: torch.Tensor | None) -> np.ndarray | None:
    if nonmember_weights is None:
        return None
    w = nonmember_weights.double().numpy()
    return np.r_[np.ones(n_members), w * len(w) / w.sum()]


def _auc(scores_m: torch.Tensor, scores_n: torch.Tensor, nonmember_weights: torch.Tensor | None = None) -> float:
    """ROC AUC of scores where lower means member, the non-members weighted to the members' mix."""
    y = np.r_[np.ones(len(scores_m)), np.zeros(len(scores_n))]
    score = -np.r_[scores_m.numpy(), scores_n.numpy()]
    return float(roc_auc_score(y, score, sample_weight=_sample_weight(len(scores_m), nonmember_weights)))


def _membership(
    scores_m: torch.Tensor,
    scores_n: torch.Tensor,
    per_t: dict[int, float],
    nonmember_weights: torch.Tensor | None = None,
) -> MembershipResult:
    """ROC of scores where lower means member (non-members weighted by ``nonmember_weights``)."""
    y = np.r_[np.ones(len(scores_m)), np.zeros(len(scores_n))]
    score = -np.r_[scores_m.numpy(), scores_n.numpy()]
    weight = _sample_weight(len(scores_m), nonmember_weights)
    fpr, tpr, _ = roc_curve(y, score, sample_weight=weight)
    weights = None if weight is None else weight[len(scores_m) :].tolist()
    n_eff = _effective_size(weights, len(scores_n))
    low = max(0.01, 1.0 / n_eff)
    return MembershipResult(
        auc=float(roc_auc_score(y, score, sample_weight=weight)),
        tpr_at_low_fpr=float(tpr[fpr <= low + 1e-12].max()),
        low_fpr=low,
        per_timestep_auc=per_t,
        member_errors=scores_m.tolist(),
        nonmember_errors=scores_n.tolist(),
        fpr=fpr.tolist(),
        tpr=tpr.tolist(),
        # Weighted non-members are worth their effective number for the AUC's spread.
        null_std=auc_null_std(len(scores_m), max(1, round(n_eff))),
        nonmember_weights=weights,
    )


@torch.no_grad()
def pia_scores(model: DiffusionModel, images: TensorSet, timestep: int, batch_size: int = 256) -> torch.Tensor:
    """PIA's statistic per image (lower: member); see :func:`pia_attack`."""
    device = model.device
    abar = model.scheduler.alphas_cumprod.to(device)[timestep]
    out = []
    for i in range(0, len(images), batch_size):
        x0 = to_model_space(images.images[i : i + batch_size]).to(device)
        y = conditioning(images.labels[i : i + batch_size].to(device), model.null_class)
        zero = torch.zeros(x0.shape[0], dtype=torch.long, device=device)
        e0 = model.unet(x0, zero, class_labels=y).sample.float()
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * e0
        e_t = model.unet(x_t, zero + timestep, class_labels=y).sample.float()
        out.append(((e_t - e0).abs() ** 4).flatten(1).sum(1).pow(0.25).cpu())
    return torch.cat(out)


def pia_attack(
    model: DiffusionModel,
    members: TensorSet,
    nonmembers: TensorSet,
    timestep: int,
    batch_size: int = 256,
    nonmember_weights: torch.Tensor | None = None,
) -> MembershipResult:
    """PIA (Kong et al., ICLR 2024): the proximal initialization attack.

    The model's own noise estimate at t = 0, ``e0 = eps(x_0, 0)``, replaces the random noise:
    ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) e0``, and the score is the l4 distance between
    ``eps(x_t, t)`` and ``e0`` (lower: member). Deterministic (no noise draws) and unlike the
    loss attack, no unlearning method here optimizes or calibrates against it.
    """
    sm = pia_scores(model, members, timestep, batch_size)
    sn = pia_scores(model, nonmembers, timestep, batch_size)
    result = _membership(sm, sn, {}, nonmember_weights)
    result.per_timestep_auc = {timestep: result.auc}
    return result


def loss_scores(
    model: DiffusionModel, images: TensorSet, timesteps: list[int], noise_draws: int, seed: int
) -> torch.Tensor:
    """The loss attack's statistic per image and timestep, ``[N, len(timesteps)]`` (lower: member)."""
    device = model.device
    labels = conditioning(images.labels.to(device), model.null_class)
    return per_sample_denoising_error(
        model.unet,
        ForwardProcess(model.scheduler, device),
        to_model_space(images.images).to(device),
        labels,
        timesteps,
        noise_draws,
        seed,
    )


def loss_attack(
    model: DiffusionModel,
    members: TensorSet,
    nonmembers: TensorSet,
    timesteps: list[int],
    noise_draws: int,
    seed: int,
    nonmember_weights: torch.Tensor | None = None,
) -> MembershipResult:
    """Score distinct member and non-member images by their denoising error (lower: member).

    ``nonmember_weights`` (one per non-member image) give the hold-out images the members' mix of
    kinds (``data.selection.composition_weights``): unweighted, a few hard-to-denoise kinds in the
    reference make ordinary members look memorized.
    """
    em = loss_scores(model, members, timesteps, noise_draws, seed)
    en = loss_scores(model, nonmembers, timesteps, noise_draws, seed)
    per_t = {t: _auc(em[:, j], en[:, j], nonmember_weights) for j, t in enumerate(timesteps)}
    return _membership(em.mean(1), en.mean(1), per_t, nonmember_weights)
