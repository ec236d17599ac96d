"""Forgetting targets: what the model should predict on the forget data instead of the truth.

EraseDiff's forgetting loss steers the model away from the ground-truth denoising of the
forget set by regressing its noise prediction onto another target:

* ``noise``: the paper's forgetting loss, exactly as the official code computes it: the
  forget image is noised with a uniform draw u ~ U[0, 1) instead of Gaussian noise,
  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) u, and the model is regressed onto that same u
  (JingWu321/EraseDiff, ddpm/runners/diffusion.py at commit 67bac47, lines 748/757 and
  779/789; kept commented out at HEAD, lines 769-770 and 820-821). Not to be confused
  with regressing onto an independent uniform draw, whose best answer is the constant 0.5.
* ``remap`` to a class (``null``, a fixed class, the ``nearest-class``: the retained class
  whose mean image is closest, the smallest change that removes the class, or the
  ``nearest-distinct`` class: the nearest one whose own samples the base model seldom takes
  for the forgotten class, or nearly): the untouched base model's prediction for the same noisy input
  under that condition.
* ``remap`` to ``neighbours``: for deleting records rather than a class. Each forget image
  is redirected toward its k nearest retained images (same label for record-level
  deletions), so the model denoises it as a model that never saw it would: into something
  like its neighbours, not into noise or another class (the idea of ReTrack, arXiv
  2509.13007). The target is built from the base model's prediction on the neighbours
  noised with the same noise, weighted by each neighbour's posterior given x_t; with a
  ``bandwidth`` each neighbour is a small Gaussian cloud of images rather than one image,
  which at the smallest timesteps leaves x_t nearly as it is (see :class:`NeighbourTarget`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ..data.tensors import to_model_space
from ..errors import ConfigError
from ..models.diffusion import DiffusionModel
from ..models.objectives import ForwardProcess, conditioning, per_sample_denoising_error, predict_eps
from ..models.sampling import sample
from ..utils import write_json

# The base model's own samples per candidate class that ``nearest-distinct`` checks. At 200, with
# 4 allowed (:data:`DISTINCT_TOLERANCE`), a destination whose samples count 5% of the time passes as
# distinct with probability 0.026 (4%: 0.095; 2%: 0.63); a candidate costs about 3 s on 2 CPU
# cores when it is ruled out in its first chunk, about 8 s measured in full (digits).
DISTINCT_SAMPLES = 200
# The samples are drawn and classified in chunks of this many: a candidate is ruled out at the
# chunk that takes its count past the tolerance, so a clearly confused one costs one chunk, not
# all 200 (a 40-step model confusing every class took 232 s to pick a destination). The draws are
# those of all 200 at once.
DISTINCT_CHUNK = 50
DISTINCT_CHUNKS = -(-DISTINCT_SAMPLES // DISTINCT_CHUNK)
# The diffusion classifier's timesteps (Li et al. 2023 spread them over the schedule) and noise draws.
DISTINCT_TIMESTEPS = tuple(range(50, 1000, 100))
DISTINCT_DRAWS = 2
# A sample of r counts as taken for f unless the model explains it better under r by this much: its
# denoising error under f is at least (1 + margin) times that under r. The model's own samples of r
# are drawn toward r, so its classifier seldom prefers f outright: in the CLI sequence it took none
# of 200 of its 1s for 8 on three parents of five, and 8 was sent onto 1 there, whose samples the
# judge reads as 8 at 0.047-0.095. The odd 8-like stroke only narrows the gap: 7-22% of those 1s
# fall within 20%, against 0-1.5% of the 2s, 4s and 7s (on all five parents), which the judge reads
# as 8 at 0.011 or less. It also rules out some the judge reads low (9s: 0.10-0.36 within, read as 8 at 0.008-0.034);
# the cost is a farther destination (benchmarks/README.md, "A margin in the destination check").
# EraseDiff's default `distinct_margin`.
DISTINCT_MARGIN = 0.2
# The share of a candidate's samples that may fall within the margin: up to 4 of 200. With none
# allowed, a class is ruled out by one sample in the tail, and on the demo's base every candidate
# for 3 but the farthest was (1-7.5% within, measured once by hand): 3 went onto 4 and the audit's
# retained accuracy dropped 0.018-0.113 on three seeds, where onto 9 it had risen.
DISTINCT_TOLERANCE = 0.02


class ForgetTarget:
    name: str = ""
    # True: the noise of q(x_t | x_0) for the forget batch is drawn from U[0, 1) instead of N(0, I).
    uniform_noise: bool = False

    def __call__(
        self,
        x0: torch.Tensor,
        y_true: torch.Tensor,
        y_in: torch.Tensor | None,
        idx: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        x_t: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (target, per-sample loss weight)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"target": self.name}


class UniformNoiseTarget(ForgetTarget):
    """The paper's target: the uniform draw that noised x_t (``eps`` is that draw here)."""

    name = "noise"
    uniform_noise = True

    def __call__(self, x0, y_true, y_in, idx, t, eps, x_t):  # noqa: ANN001
        return eps, torch.ones(x0.shape[0], device=x0.device)


class ClassRemapTarget(ForgetTarget):
    """The base model's prediction for the same noisy input under another condition.

    ``mapping`` sends each forgotten label to one retained class (or the null class). A
    fixed mapping matters: regressing onto a *random* class per sample converges to the
    average over classes, i.e. roughly the unconditional prediction, which still draws
    the forgotten class about 1/K of the time.
    """

    name = "remap"

    def __init__(
        self,
        frozen_unet: torch.nn.Module,
        mapping: dict[int, int],
        mode: str,
        confusion: dict[int, dict[int, float]] | None = None,
    ) -> None:
        # confusion: the shares ``nearest-distinct`` measured, kept for the run record.
        self.unet, self.mapping, self.mode, self.confusion = frozen_unet, mapping, mode, confusion
        size = max(mapping) + 1 if mapping else 1
        self.table = torch.arange(max(size, max(mapping.values(), default=0) + 1), dtype=torch.long)
        for src, dst in mapping.items():
            self.table[src] = dst

    def destinations(self, y_true: torch.Tensor) -> torch.Tensor:
        """Where each label is sent (labels outside the mapping stay themselves)."""
        table = self.table.to(y_true.device)
        return table[y_true.clamp(min=0, max=len(table) - 1)]

    @torch.no_grad()
    def __call__(self, x0, y_true, y_in, idx, t, eps, x_t):  # noqa: ANN001
        target = predict_eps(self.unet, x_t, t, self.destinations(y_true))
        return target, torch.ones(x0.shape[0], device=x0.device)

    @torch.no_grad()
    def guided(
        self, x_t: torch.Tensor, t: torch.Tensor, y_true: torch.Tensor, null: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """The base's classifier-free guided prediction under each label's destination."""
        e_u = predict_eps(self.unet, x_t, t, null)
        e_d = predict_eps(self.unet, x_t, t, self.destinations(y_true))
        return e_u + scale * (e_d - e_u)

    def describe(self) -> dict:
        out = {"target": "remap", "remap_to": self.mode, "mapping": {str(k): v for k, v in self.mapping.items()}}
        if self.confusion is not None:
            out["confusion"] = {str(f): {str(r): v for r, v in row.items()} for f, row in self.confusion.items()}
        return out


def class_mapping(
    mode: str,
    forget_labels: list[int],
    retained: list[int],
    null_class: int,
    class_means: dict[int, torch.Tensor] | None = None,
) -> dict[int, int]:
    """Where each forgotten label is sent: the null class, a fixed class, or the nearest class."""
    if mode == "null":
        return {c: null_class for c in forget_labels}
    if mode.isdigit():
        return {c: int(mode) for c in forget_labels}
    if mode == "nearest-class":
        if not retained:
            raise ConfigError("remap_to=nearest-class needs at least one retained class")
        assert class_means is not None
        return {c: by_distance(c, retained, class_means)[0] for c in forget_labels}
    raise ConfigError(f"unknown class remap mode {mode!r}")


def by_distance(c: int, retained: list[int], class_means: dict[int, torch.Tensor]) -> list[int]:
    """The retained classes, nearest mean image to class ``c``'s first (those without a mean last)."""
    if c not in class_means:
        return list(retained)
    dist = {r: float((class_means[c] - class_means[r]).pow(2).sum()) for r in retained if r in class_means}
    return sorted(dist, key=dist.get) + [r for r in retained if r not in dist]


def distinct_mapping(
    model: DiffusionModel,
    forget_labels: list[int],
    retained: list[int],
    class_means: dict[int, torch.Tensor],
    seed: int = 0,
    taken: set[int] | frozenset[int] = frozenset(),
    margin: float = DISTINCT_MARGIN,
    tolerance: float = DISTINCT_TOLERANCE,
) -> tuple[dict[int, int], dict[int, dict[int, float]]]:
    """``nearest-distinct``: each forgotten class goes to the nearest retained class the base model keeps apart from it.

    An erased class is drawn as its destination afterwards, so whatever of f shows in the model's
    renderings of r is what is left of f, however well the erasure went: a model whose 1s look
    like 8s now and then makes a flawless erasure of 8 onto 1 read as a partial one, by any judge
    that sees it. The model is its own judge here: candidates are tried nearest first and the
    first of whose samples :func:`confused_share` takes at most ``tolerance`` for f (or nearly:
    ``margin``) wins; a candidate is ruled out at the chunk of its samples that takes it past the
    tolerance, and its recorded share is that of the chunks up to that one. If every one is
    confused more, each is measured in full (going on from its screened chunks) and the least
    confused wins (the nearest of equals). No evaluator is consulted: the method must not depend on
    the audit's judge (issue 11 part 7). ``taken``: classes that earlier erased classes are drawn as;
    they are tried last, so that erasing one later moves as few classes at once as possible.
    ``margin``, ``tolerance``: :data:`DISTINCT_MARGIN`, :data:`DISTINCT_TOLERANCE` (both 0: the
    first candidate the model never prefers f for wins). Returns the mapping and the shares measured
    (per f, per candidate tried).
    """
    if not retained:
        raise ConfigError("remap_to=nearest-distinct needs at least one retained class")
    mapping: dict[int, int] = {}
    shares: dict[int, dict[int, float]] = {}
    weights = weights_digest(model)
    for f in forget_labels:
        near = by_distance(f, retained, class_means)
        order = [r for r in near if r not in taken] + [r for r in near if r in taken]
        tried: dict[int, float] = {}
        for r in order:
            tried[r] = confused_share(model, f, r, seed, True, weights, margin, tolerance)
            if tried[r] <= tolerance:
                break
        else:
            # Every candidate is confused past the tolerance: the least confused wins, which takes
            # the whole measurement of each (a screened share is only that of its first chunks).
            tried = {r: confused_share(model, f, r, seed, False, weights, margin) for r in order}
        mapping[f] = min(tried, key=lambda r: (tried[r], order.index(r)))
        shares[f] = tried
    return mapping, shares


def share_cache_dir() -> Path:
    """Where measured shares are kept: ``$UNLEARN_CACHE_DIR/nearest-distinct`` (default ``~/.cache/unlearn``)."""
    root = os.environ.get("UNLEARN_CACHE_DIR") or Path.home() / ".cache" / "unlearn"
    return Path(root) / "nearest-distinct"


def weights_digest(model: DiffusionModel) -> str:
    """The hash of the UNet's weights as they are in memory (a model being erased has no file yet)."""
    h = hashlib.sha256()
    for name, t in sorted(model.unet.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def share_key(
    model: DiffusionModel, f: int, r: int, seed: int, weights: str | None = None, margin: float = DISTINCT_MARGIN
) -> str:
    """What a share depends on: the weights, the noise schedule, the guidance and the check's own settings.

    ``weights``: :func:`weights_digest` of ``model``, when the caller already has it (it hashes every
    weight, once per candidate otherwise).
    """
    h = hashlib.sha256()
    h.update((weights or weights_digest(model)).encode())
    settings = {
        "scheduler": dict(model.scheduler.config),
        "guidance": model.meta.guidance_scale,
        "null": model.null_class,
        "samples": DISTINCT_SAMPLES,
        "timesteps": list(DISTINCT_TIMESTEPS),
        "draws": DISTINCT_DRAWS,
        "chunk": DISTINCT_CHUNK,
        "margin": float(margin),
        "f": f,
        "r": r,
        "seed": seed,
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def confused_share(
    model: DiffusionModel,
    f: int,
    r: int,
    seed: int,
    screen: bool = False,
    weights: str | None = None,
    margin: float = DISTINCT_MARGIN,
    tolerance: float = DISTINCT_TOLERANCE,
) -> float:
    """The share of the model's own guided samples of class r that its diffusion classifier takes for f.

    Li et al. 2023, pairwise: a sample counts when its denoising error over a fixed grid of
    timesteps and noise draws under label f is below ``1 + margin`` times that under r
    (:data:`DISTINCT_MARGIN`; at 0, when f explains it better at all). ``screen``: the share over the
    chunks (:data:`DISTINCT_CHUNK`) up to the one that takes the count past ``tolerance`` of
    :data:`DISTINCT_SAMPLES`, which is enough to rule r out; a share within the tolerance is always
    over all of them. Either answer is the same whatever was measured before.

    A share is a property of the weights, so it is measured once per model and kept on disk
    (:func:`share_cache_dir`, keyed by :func:`share_key`) as the count of each chunk measured: a
    retried request, the next seed of a benchmark or another erasure from the same base reads it
    back instead of sampling again, and a longer measurement goes on from the chunks kept. An
    unreadable or inconsistent entry is measured again. ``weights``: as for :func:`share_key`.
    """
    allowed = int(tolerance * DISTINCT_SAMPLES + 1e-9)
    path = share_cache_dir() / f"{share_key(model, f, r, seed, weights, margin)}.json"
    chunks = _cached_chunks(path)
    if not (len(chunks) == DISTINCT_CHUNKS or (screen and sum(chunks) > allowed)):
        more = measure_confused_share(model, f, r, seed, screen, len(chunks), margin, allowed - sum(chunks))
        chunks = chunks + more
        try:
            write_json(path, {"chunks": chunks, "f": f, "r": r})
        except OSError:
            pass  # a read-only home only costs the next run the measurement
    if screen:
        # Up to the chunk that took the count past the tolerance, wherever a longer measurement went.
        total = 0
        for i, count in enumerate(chunks):
            total += count
            if total > allowed:
                chunks = chunks[: i + 1]
                break
    return round(sum(chunks) / min(len(chunks) * DISTINCT_CHUNK, DISTINCT_SAMPLES), 4)


def _cached_chunks(path: Path) -> list[int]:
    """A cache entry's per-chunk counts: the first chunks of the measurement, or all of them."""
    try:
        chunks = json.loads(path.read_text())["chunks"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    ok = (
        isinstance(chunks, list)
        and 0 < len(chunks) <= DISTINCT_CHUNKS
        and all(type(c) is int and 0 <= c <= DISTINCT_CHUNK for c in chunks)
    )
    return chunks if ok else []


def measure_confused_share(
    model: DiffusionModel,
    f: int,
    r: int,
    seed: int,
    screen: bool = False,
    start: int = 0,
    margin: float = DISTINCT_MARGIN,
    allowed: int = 0,
) -> list[int]:
    """:func:`confused_share` without the cache: the count of each chunk from chunk ``start`` on (all
    of them, or when ``screen``, up to the one that takes their sum past ``allowed``)."""
    counts = []
    for count in share_chunks(model, f, r, seed, start, margin):
        counts.append(count)
        if screen and sum(counts) > allowed:
            break
    return counts


def share_chunks(
    model: DiffusionModel, f: int, r: int, seed: int, start: int = 0, margin: float = DISTINCT_MARGIN
) -> Iterator[int]:
    """How many of each chunk of the model's guided samples of class r are taken for f (within
    ``margin``, as :func:`confused_share` says), chunk ``start`` on."""
    for _, error_f, error_r in pair_errors(model, f, r, seed, start):
        yield int((error_f < (1 + margin) * error_r).sum())


@torch.no_grad()
def pair_errors(
    model: DiffusionModel, f: int, r: int, seed: int, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per chunk from chunk ``start`` on: the model's guided samples of class r, and each one's
    denoising error under f and under r (mean over the classifier's timesteps and noise draws).

    The initial noise and the classifier's noise are drawn for all :data:`DISTINCT_SAMPLES` at once
    from ``seed``, and each chunk uses its slice: the chunks add up to the whole measurement (the
    same draws; smaller batches may round the last bit of a convolution differently).
    """
    n, (c, h, w) = DISTINCT_SAMPLES, model.meta.image_shape
    grid = list(DISTINCT_TIMESTEPS)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start_noise = torch.randn((n, c, h, w), generator=gen)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    class_noise = torch.randn((DISTINCT_DRAWS, len(grid), n, c, h, w), generator=gen)
    fp = ForwardProcess(model.scheduler, model.device)
    for lo in range(start * DISTINCT_CHUNK, n, DISTINCT_CHUNK):
        hi = min(lo + DISTINCT_CHUNK, n)
        labels = torch.full((hi - lo,), r, dtype=torch.long)
        x = sample(model, labels, seed=seed, noise=start_noise[lo:hi]).to(model.device)

        def error(label: int, x: torch.Tensor = x, lo: int = lo, hi: int = hi) -> torch.Tensor:
            cond = torch.full((hi - lo,), label, dtype=torch.long, device=model.device)
            noise = class_noise[:, :, lo:hi]
            return per_sample_denoising_error(model.unet, fp, x, cond, grid, DISTINCT_DRAWS, seed, noise=noise).mean(1)

        yield x, error(f), error(r)


def kept_mapping(
    erased: list[int],
    prior: dict[int, int],
    current: dict[int, int],
    retained: list[int],
    null_class: int,
    class_means: dict[int, torch.Tensor] | None = None,
    reroute: Callable[[int, set[int]], int] | None = None,
) -> dict[int, int]:
    """Where each class erased by an earlier deletion is sent now: never onto an erased class.

    An earlier class keeps its previous target while that is still retained (the model already
    behaves that way: the smallest change). When its target has been erased since (3 sent onto 5,
    then 5 erased), ``reroute(c, taken)`` chooses its new one, given the classes that already
    receive an erased class now (``taken``: this deletion's destinations and the earlier classes'
    kept or chosen ones). Without ``reroute`` it follows the chain of later mappings (3 -> 5 ->
    where 5 goes now); failing that, the nearest retained class by mean image, or the first
    retained class.
    """
    if not retained:
        raise ConfigError("every class has been erased: nothing is left to send the erased classes to")
    ok = set(retained) | {null_class}
    out = {c: prior[c] for c in erased if prior.get(c) in ok}
    for c in erased:
        if c in out:
            continue
        if reroute is not None:
            taken = (set(current.values()) | set(out.values())) - {null_class}
            dst = reroute(c, taken)
            if dst not in ok:
                raise ConfigError(f"class {c} was rerouted onto {dst}, which is not a retained class")
            out[c] = dst
            continue
        dst, seen = prior.get(c), {c}
        while dst is not None and dst not in ok and dst not in seen:
            seen.add(dst)
            dst = current.get(dst, prior.get(dst))
        if dst is None or dst not in ok:
            dst = retained[0] if class_means is None else by_distance(c, retained, class_means)[0]
        out[c] = dst
    return {c: out[c] for c in erased}


def drawn_as_mean(c: int, prior: dict[int, int], class_means: dict[int, torch.Tensor]) -> torch.Tensor | None:
    """The mean image of what the model draws for erased class ``c`` now: that of the class it was
    sent to (following earlier mappings while those have no images either: a purged dataset holds
    none of an erased class), else its own. The CLI's dataset still holds c's records, the
    pipeline's does not; both reroute c from where it is now, so both choose alike."""
    seen = {c}
    dst = prior.get(c)
    while dst is not None and dst not in seen:
        if dst in class_means:
            return class_means[dst]
        seen.add(dst)
        dst = prior.get(dst)
    return class_means.get(c)


def class_means(images_u8: torch.Tensor, labels: torch.Tensor) -> dict[int, torch.Tensor]:
    x = to_model_space(images_u8).flatten(1).cpu()
    return {int(c): x[labels.cpu() == c].mean(0) for c in labels.unique().tolist() if c >= 0}


def nearest_neighbours(
    forget_u8: torch.Tensor,
    forget_labels: torch.Tensor,
    retain_u8: torch.Tensor,
    retain_labels: torch.Tensor,
    k: int,
    same_label: bool,
    chunk: int = 1024,
) -> torch.Tensor:
    """Indices ``[N_forget, k]`` of each forget image's nearest retained images (pixel L2)."""
    f = to_model_space(forget_u8).flatten(1).cpu()
    r = to_model_space(retain_u8).flatten(1).cpu()
    fl, rl = forget_labels.cpu(), retain_labels.cpu()
    k = min(k, r.shape[0])
    out = torch.empty((f.shape[0], k), dtype=torch.long)
    for s in range(0, f.shape[0], chunk):
        d = torch.cdist(f[s : s + chunk], r)
        if same_label:
            mismatch = fl[s : s + chunk, None] != rl[None, :]
            # A label with no retained image falls back to all retained images.
            has_peer = (~mismatch).any(1, keepdim=True)
            d = torch.where(mismatch & has_peer, torch.full_like(d, float("inf")), d)
        out[s : s + chunk] = d.topk(k, largest=False).indices
    return out


class NeighbourTarget(ForgetTarget):
    name = "remap"

    def __init__(
        self,
        frozen_unet: torch.nn.Module,
        fp: ForwardProcess,
        neighbours: torch.Tensor,
        retain_u8: torch.Tensor,
        retain_labels: torch.Tensor,
        null_class: int | None,
        bandwidth: float = 0.0,
        full_weight_snr: float = 1.0,
    ) -> None:
        self.unet, self.fp, self.null = frozen_unet, fp, null_class
        self.bandwidth, self.full_weight_snr = bandwidth, full_weight_snr
        self.neighbours = neighbours.to(retain_u8.device)
        self.retain_u8, self.retain_labels = retain_u8, retain_labels

    @torch.no_grad()
    def __call__(self, x0, y_true, y_in, idx, t, eps, x_t):  # noqa: ANN001
        n, k = x0.shape[0], self.neighbours.shape[1]
        nb = self.neighbours[idx]  # [n, k]
        xn = to_model_space(self.retain_u8[nb.flatten()])  # [n*k, C, H, W]
        t_rep = t.repeat_interleave(k)
        eps_rep = eps.repeat_interleave(k, dim=0)
        x_t_n = self.fp.add_noise(xn, eps_rep, t_rep)
        labels = conditioning(self.retain_labels[nb.flatten()], self.null)
        if labels is not None:
            # Where the forget sample is conditioned on the null class, so are its neighbours.
            dropped = (y_in == self.null).repeat_interleave(k)
            labels = torch.where(dropped, torch.full_like(labels, self.null), labels)
        eps_n = predict_eps(self.unet, x_t_n, t_rep, labels)
        a, s = self.fp.coeffs(t_rep)
        # The noise that would make x_t denoise into the model's estimate of neighbour j.
        redirect = eps_n + (x_t.repeat_interleave(k, dim=0) - x_t_n) / s
        # With a bandwidth h each neighbour stands for a Gaussian N(x_j, h^2 I) of images, not for
        # itself alone: x_t given j is N(a x_j, (a^2 h^2 + s^2) I) and E[eps | x_t, j] is the
        # redirection shrunk by c = s^2 / (a^2 h^2 + s^2). Where the noise is large c is 1 (the
        # empirical posterior); where it is small the target tends to 0, x_t left nearly as it is,
        # instead of a jump onto another image, which a model that never saw the record does not
        # make either. h = 0: the empirical posterior at every t.
        shrink = s.pow(2) / (a.pow(2) * self.bandwidth**2 + s.pow(2))
        # Posterior of neighbour j given x_t: the Gaussian likelihood above, |x_t - a x_j|^2 / (2 (a^2 h^2 + s^2)).
        logw = -0.5 * shrink.view(n, k) * redirect.view(n, k, -1).pow(2).sum(-1)
        redirect = (shrink * redirect).view(n, k, *x0.shape[1:])
        w = logw.softmax(dim=1).view(n, k, *([1] * (x0.dim() - 1)))
        target = (w * redirect).sum(1)
        # Compare in image space where noise is small and in noise space where it is large:
        # weight min(1, snr_0 / SNR) keeps the huge low-t redirections from dominating; snr_0 is
        # ``full_weight_snr``. A bandwidth bounds those redirections, and then a larger snr_0 lets
        # the loss reach t = 100-200, where many copies of a record are memorized.
        ab = self.fp.sqrt_ab[t].pow(2)
        weight = (self.full_weight_snr * (1 - ab) / ab).clamp(max=1.0)
        return target, weight

    def describe(self) -> dict:
        return {
            "target": "remap",
            "remap_to": "neighbours",
            "k": int(self.neighbours.shape[1]),
            "bandwidth": self.bandwidth,
            "full_weight_snr": self.full_weight_snr,
        }
