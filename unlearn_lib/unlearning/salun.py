"""SalUn (Fan, Liu, Zhang, Wei, Wong, Liu; ICLR 2024): saliency-masked random-label forgetting.

For a class-conditional DDPM, as the official code does it (OPTML-Group/Unlearn-Saliency,
DDPM/runners/diffusion.py at a6e89fd, cited by line below):

1. **Saliency mask** (``generate_mask``, lines 933-1039): one pass over the forget set;
   per batch, the gradient of the denoising loss of the *guided* prediction
   ``(1 + w) eps(x_t, c) - w eps(x_t, null)`` (w = 2, i.e. our guidance scale 3) is clipped
   to norm 1 and summed; the mask keeps the ``mask_ratio`` (0.5, line 1006) fraction of
   weights with the largest absolute summed gradient.
2. **Random-label forgetting** (``saliency_unlearn``, lines 482-596): each step,
   ``MSE(eps(x_t, c_f), sg[eps(x_t, c')]) + alpha * L_r``, where c' is a fixed other class
   ((c_f + 1) mod 10, lines 563-570), both predictions come from the current model with
   classifier-free-guidance dropout, and ``L_r`` is the retain set's denoising loss. The
   gradient is clipped, then multiplied by the mask, so only salient weights move.

**Record deletion** is our extension: the published diffusion experiments erase classes and
concepts only. The paper's random-label forgetting for classifiers (each forget data point
relabelled with a random other class) carries over to a class-conditional DDPM per record: with
``pseudo_label=auto`` (the default) a record deletion relabels each forget record with a
random other class, drawn once per run from its seed; the mask, the loss and every published
hyper-parameter are unchanged. A class erasure keeps the official fixed next class.

Loss scales follow the official code: ``L_r`` and the mask's loss sum the squared error over
pixels and average over the batch (DDPM/functions/losses.py), the forgetting loss is a plain
mean (``nn.MSELoss``). So ``alpha`` weighs ``L_r`` by the image size: alpha = 1e-3 is about 3x
the forgetting loss on 32x32x3 CIFAR-10 but 0.064x on 8x8 digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..models.objectives import conditioning, drop_labels
from .base import CommonConfig, Unlearner, UnlearningResult, UnlearningTask, register
from .loop import UnlearningLoop


@dataclass
class SalUnConfig(CommonConfig):
    steps: int = 1000  # configs/cifar10_saliency_unlearn.yml training.n_iters
    lr: float = 1e-4  # same file, optim.lr (Adam, no weight decay)
    batch_size: int = 128  # same file, training.batch_size (datasets/__init__.py lines 165-176: both loaders)
    forget_batch_size: int = 128
    ema_decay: float = 0.0  # same file, model.ema False
    t_sampling: str = "antithetic"  # runners/diffusion.py lines 530-533, 547-550
    alpha: float = 1e-3  # README step 3: --alpha 1e-3 (argparse default 1.0, train.py line 71)
    mask_ratio: float = 0.5  # runners/diffusion.py line 1006 (threshold_list [0.5]); train.py --mask_ratio 0.5
    mask_guidance: float = 3.0  # lines 975-977: cond_scale 2.0 as (1 + w) eps_c - w eps_u = our scale 3
    # next: the next retained class after c_f ((c_f + 1) mod K), officially | random: a random other
    # retained class per forget record | <class index> | auto: next for a class erasure, random for records.
    pseudo_label: str = "auto"

    def validate(self) -> None:
        CommonConfig.validate(self)
        if self.alpha < 0:
            raise ConfigError(f"alpha must be >= 0, got {self.alpha}")
        if not 0 < self.mask_ratio <= 1:
            raise ConfigError(f"mask_ratio must be in (0, 1], got {self.mask_ratio}")
        if self.pseudo_label not in ("auto", "next", "random") and not self.pseudo_label.isdigit():
            raise ConfigError(f"pseudo_label must be auto, next, random or a class index, got {self.pseudo_label!r}")


def saliency_mask(
    loop: UnlearningLoop, forget_batch_size: int, guidance: float, ratio: float
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Masks (1 = may change) over ``loop.params``: the top ``ratio`` of |summed forget-loss gradient|."""
    unet, null = loop.model.unet, loop.model.null_class
    total = [torch.zeros_like(p) for p in loop.params]
    n = len(loop.task.forget)
    was_training = unet.training
    unet.eval()
    for start in range(0, n, forget_batch_size):
        idx = torch.arange(start, min(start + forget_batch_size, n), device=loop.device)
        x0, y, _, _ = loop.forget_batch(idx)
        eps, t = loop.noise_and_t(x0)
        x_t = loop.fp.add_noise(x0, eps, t)
        y = conditioning(y, null)  # an unlabelled record under the null class, as training learned it
        both = loop.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
        e_c, e_u = both.chunk(2)
        pred = e_u + guidance * (e_c - e_u)
        loss = (pred - eps).pow(2).flatten(1).sum(1).mean()
        grads = torch.autograd.grad(loss, loop.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(loop.params, grads, strict=True)]
        # The official code clips each batch's gradient in place before adding it up.
        norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads))
        if loop.cfg.grad_clip > 0:
            scale = (loop.cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            grads = [g * scale for g in grads]
        for acc, g in zip(total, grads, strict=True):
            acc.add_(g)
    unet.train(was_training)
    flat = torch.cat([g.abs().flatten() for g in total])
    keep = max(1, int(round(ratio * flat.numel())))
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[flat.topk(keep).indices] = True
    masks, offset = [], 0
    for p in loop.params:
        masks.append(chosen[offset : offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    return masks, {"mask_kept": keep, "mask_total": int(flat.numel())}


def pseudo_mapping(mode: str, forget_labels: list[int], retained: list[int], num_classes: int) -> dict[int, int]:
    """The fixed other class each forgotten class is relabelled as."""
    if mode.isdigit():
        cls = int(mode)
        if cls not in retained:
            raise ConfigError(
                f"pseudo_label={cls} must be a retained class other than the forget data's "
                f"({', '.join(map(str, retained))})"
            )
        return {c: cls for c in forget_labels}
    out = {}
    for c in forget_labels:
        # (c + 1) mod K as officially, stepping over classes that are being forgotten too.
        out[c] = next(((c + k) % num_classes for k in range(1, num_classes) if (c + k) % num_classes in retained), c)
    return out


def random_pseudo_labels(labels: torch.Tensor, retained: list[int], seed: int) -> torch.Tensor:
    """One random retained class other than its own per record (the classifier version's random labels)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty_like(labels)
    for i, c in enumerate(labels.tolist()):
        others = [k for k in retained if k != c]
        if not others:
            raise ConfigError(f"salun: no retained class other than {c} to relabel a forget record with")
        out[i] = others[int(torch.randint(len(others), (1,), generator=gen))]
    return out


@register
class SalUn(Unlearner):
    name = "salun"
    summary = "SalUn: saliency mask from the forget-loss gradient, then random-label forgetting plus retain loss"
    config_cls = SalUnConfig

    def run(self, task: UnlearningTask, checkpoint_dir: str | None = None, progress: bool = True) -> UnlearningResult:
        cfg: SalUnConfig = self.config  # type: ignore[assignment]
        if not task.base.conditional:
            raise ConfigError("salun relabels the forget data: it needs a class-conditional model")
        mode = cfg.pseudo_label if cfg.pseudo_label != "auto" else ("next" if task.scope == "class" else "random")
        loop = UnlearningLoop(self.name, task, cfg, checkpoint_dir, progress)
        labels = loop.forget_y
        if mode == "random":  # a record without a label (-1) may take any retained class
            mapping = {}
            pseudo = random_pseudo_labels(labels.cpu(), task.retained_labels, cfg.seed).to(loop.device)
        else:
            if bool((labels < 0).any()):
                raise ConfigError(
                    f"salun pseudo_label={mode} sends each forget class to another: "
                    f"{int((labels < 0).sum())} forget records carry no label (use pseudo_label=random)"
                )
            present = sorted({int(c) for c in labels.tolist()})
            retained = [c for c in task.retained_labels if c not in present]
            mapping = pseudo_mapping(mode, present, retained, task.base.meta.num_classes)
            pseudo = torch.tensor([mapping[int(c)] for c in labels.tolist()], device=loop.device)
        # Before resuming: the mask belongs to the base model and the run's seed, so a resumed run
        # computes the same one.
        masks, mask_info = saliency_mask(loop, cfg.forget_batch_size, cfg.mask_guidance, cfg.mask_ratio)
        optimizer = loop.adam(cfg.lr)
        loop.resume({"outer": optimizer})
        pixels = loop.forget_x[0].numel()
        bar = loop.bar()
        for step in range(loop.start_step, cfg.steps):
            x_r, y_r = loop.retain_batch()
            loss_r = loop.denoising_loss(x_r, y_r) * pixels  # per-image sum over pixels, as officially
            x_f, _, y_in, idx = loop.forget_batch()
            eps, t = loop.noise_and_t(x_f)
            x_t = loop.fp.add_noise(x_f, eps, t)
            output = loop.predict(x_t, t, y_in)
            pseudo_in = drop_labels(pseudo[idx], loop.model.null_class, loop.cond_drop, loop.gen)
            with torch.no_grad():
                target = loop.predict(x_t, t, pseudo_in)
            loss_f = (output - target).pow(2).mean()
            grads = torch.autograd.grad(loss_f + cfg.alpha * loss_r, loop.params, allow_unused=True)
            loop.apply(
                optimizer,
                [torch.zeros_like(p) if g is None else g for p, g in zip(loop.params, grads, strict=True)],
                mask=masks,
            )
            loop.log(loss_r=loss_r.detach(), loss_f=loss_f.detach())
            bar.update(1)
            loop.maybe_checkpoint(step + 1, {"outer": optimizer})
        bar.close()
        result = loop.finish(cfg.steps)
        result.config.update(mask_info, resolved_pseudo_label=mode)
        if mapping:
            result.config["pseudo_mapping"] = {str(k): v for k, v in mapping.items()}
        else:
            counts = torch.bincount(pseudo.cpu(), minlength=task.base.meta.num_classes).tolist()
            result.config["pseudo_label_counts"] = {str(c): n for c, n in enumerate(counts) if n}
        return result
