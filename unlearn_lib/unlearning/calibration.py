"""Calibrated stop: end forgetting once the forget records look like records never trained on.

Under-forgetting leaves the records extractable; over-forgetting makes their denoising
error *higher* than that of unseen records, so they stand out as deleted (a membership
leak of who asked). The stop compares the mean denoising error of the forget images with
that of hold-out images like them, on fixed noise, and fires when the gap closes.
"""

from __future__ import annotations

import torch

from ..data.tensors import TensorSet, to_model_space
from ..models.objectives import ForwardProcess, per_sample_denoising_error


class CalibratedStop:
    def __init__(
        self,
        forget: TensorSet,
        reference: TensorSet,
        fp: ForwardProcess,
        device: torch.device,
        timesteps: list[int],
        noise_draws: int,
        seed: int,
        conditional: bool,
    ) -> None:
        self.forget = forget.distinct()
        self.reference = reference.distinct()
        self.fp, self.timesteps, self.draws, self.seed = fp, timesteps, noise_draws, seed
        self.xf = to_model_space(self.forget.images).to(device)
        self.xr = to_model_space(self.reference.images).to(device)
        self.yf = self.forget.labels.clamp(min=0).to(device) if conditional else None
        self.yr = self.reference.labels.clamp(min=0).to(device) if conditional else None
        self.reference_error: float | None = None

    def _mean_error(self, unet: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> float:
        err = per_sample_denoising_error(unet, self.fp, x, y, self.timesteps, self.draws, self.seed)
        return float(err.mean())

    def measure(self, unet: torch.nn.Module) -> dict:
        was_training = unet.training
        unet.eval()
        forget = self._mean_error(unet, self.xf, self.yf)
        # Hold-out error moves little while forgetting, but it is cheap: measure it each time.
        reference = self._mean_error(unet, self.xr, self.yr)
        if was_training:
            unet.train()
        self.reference_error = reference
        return {"forget_error": forget, "reference_error": reference, "ratio": forget / max(reference, 1e-12)}

    @torch.no_grad()
    def bisect(
        self, unet: torch.nn.Module, params: list[torch.nn.Parameter], before: list[torch.Tensor], iterations: int
    ) -> tuple[float, dict]:
        """Land on the crossing between ``before`` (still memorized) and the current weights.

        One optimiser step can overshoot the hold-out level by far; the weights are set to
        ``before + alpha * (current - before)`` with ``alpha`` found by bisection so that the
        forget error just reaches the reference error. Returns ``alpha`` and the measurement.
        """
        after = [p.detach().clone() for p in params]
        lo, hi = 0.0, 1.0
        best = (1.0, self.measure(unet))
        for _ in range(iterations):
            mid = (lo + hi) / 2
            for p, b, a in zip(params, before, after, strict=True):
                p.copy_(b + mid * (a - b))
            m = self.measure(unet)
            if m["forget_error"] >= m["reference_error"]:
                hi, best = mid, (mid, m)
            else:
                lo = mid
        for p, b, a in zip(params, before, after, strict=True):
            p.copy_(b + best[0] * (a - b))
        return best

    def describe(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "noise_draws": self.draws,
            "forget_images": len(self.forget),
            "reference_images": len(self.reference),
        }
