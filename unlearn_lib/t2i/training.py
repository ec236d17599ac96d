"""Training a text-to-image latent diffusion model from scratch: the ``tiny-sd`` preset.

Two phases in the order Stable Diffusion was built: a VAE (reconstruction + a small KL term),
whose latent scale is then measured and stored as ``scaling_factor``; then the UNet and the
text encoder together on the frozen VAE's latents, conditioned on each record's caption, with
the caption dropped to the empty prompt 10% of the time for classifier-free guidance. One
readable loop per phase, accelerate for device and precision, EMA on the UNet, checkpoints
and resume, a progress bar.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..checkpoint import CheckpointManager, restore_rng, rng_state
from ..data.manifest import Dataset, Record
from ..data.tensors import TensorSet, to_model_space
from ..errors import ConfigError, UnlearnError
from ..models.accel import (
    average_gradients,
    check_divisible,
    is_main_process,
    make_accelerator,
    mean_value,
    shard_rows,
    wait_for_everyone,
)
from ..models.objectives import ForwardProcess
from ..utils import atomic_output_dir, pick_device, write_json
from ..viz import save_loss_curve
from .model import T2IMeta, TextToImageModel
from .tokenizer import build_caption_tokenizer


@dataclass(frozen=True)
class T2IPreset:
    name: str
    description: str
    sample_size: int
    channels: int
    vae_channels: tuple[int, ...]
    latent_channels: int
    unet_channels: tuple[int, ...]
    cross_attention_dim: int
    text_layers: int
    text_heads: int
    max_prompt_tokens: int
    norm_num_groups: int = 8
    train_defaults: dict = field(default_factory=dict)


T2I_PRESETS: dict[str, T2IPreset] = {
    "tiny-sd": T2IPreset(
        name="tiny-sd",
        description="a Stable-Diffusion-layout latent text-to-image model for 8x8 digits "
        "(VAE 8x8 -> 4x4x4, cross-attention UNet, 2-layer CLIP text encoder); minutes on 2 CPU cores",
        sample_size=8,
        channels=1,
        vae_channels=(32, 64),
        latent_channels=4,
        unet_channels=(32, 64),
        cross_attention_dim=64,
        text_layers=2,
        text_heads=4,
        max_prompt_tokens=16,
        train_defaults={"vae_steps": 800, "steps": 2000, "batch_size": 64, "lr": 1e-3},
    ),
}


def get_t2i_preset(name: str) -> T2IPreset:
    try:
        return T2I_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown text-to-image preset {name!r} (known: {', '.join(T2I_PRESETS)})") from None


@dataclass
class T2ITrainConfig:
    preset: str = "tiny-sd"
    vae_steps: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.999
    warmup_steps: int = 100
    grad_clip: float = 1.0
    guidance_scale: float = 3.0
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"
    checkpoint_every: int = 500

    def resolved(self) -> T2ITrainConfig:
        d = get_t2i_preset(self.preset).train_defaults
        cfg = replace(
            self,
            vae_steps=d["vae_steps"] if self.vae_steps is None else self.vae_steps,
            steps=d["steps"] if self.steps is None else self.steps,
            batch_size=d["batch_size"] if self.batch_size is None else self.batch_size,
            lr=d["lr"] if self.lr is None else self.lr,
        )
        if cfg.steps < 1 or cfg.vae_steps < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise ConfigError("steps, vae_steps and batch_size must be >= 1 and lr > 0")
        if not 0 <= cfg.cond_drop_prob < 1:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {cfg.cond_drop_prob}")
        return cfg


def class_prompts(dataset: Dataset) -> tuple[list[str], list[str]]:
    """Each class's name and its most common caption (class-level prompts for evaluations)."""
    if dataset.num_classes == 0:
        return [], []
    names = list(dataset.info.get("class_names") or [str(i) for i in range(dataset.num_classes)])
    prompts = []
    for c in range(dataset.num_classes):
        counts = Counter(r.caption for r in dataset.train if r.label == c and r.caption)
        if not counts:
            raise ConfigError(f"class {names[c]!r} has no captioned training record to prompt it with")
        prompts.append(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0])
    return names, prompts


def captions_of(records: list[Record]) -> list[str]:
    missing = [r.record_id for r in records if not r.caption]
    if missing:
        raise ConfigError(
            f"{len(missing)} record(s) have no caption (e.g. {missing[0]}): a text-to-image model trains on captions"
        )
    return [r.caption or "" for r in records]


def build_t2i_model(preset: T2IPreset, captions: list[str], meta: T2IMeta, seed: int = 0) -> TextToImageModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_caption_tokenizer(captions, max_length=preset.max_prompt_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        n_vae = len(preset.vae_channels)
        vae = AutoencoderKL(
            in_channels=preset.channels,
            out_channels=preset.channels,
            down_block_types=("DownEncoderBlock2D",) * n_vae,
            up_block_types=("UpDecoderBlock2D",) * n_vae,
            block_out_channels=preset.vae_channels,
            layers_per_block=1,
            latent_channels=preset.latent_channels,
            norm_num_groups=preset.norm_num_groups,
            sample_size=preset.sample_size,
        )
        n_unet = len(preset.unet_channels)
        unet = UNet2DConditionModel(
            sample_size=preset.sample_size // 2 ** (n_vae - 1),
            in_channels=preset.latent_channels,
            out_channels=preset.latent_channels,
            down_block_types=("CrossAttnDownBlock2D",) + ("DownBlock2D",) * (n_unet - 1),
            up_block_types=("UpBlock2D",) * (n_unet - 1) + ("CrossAttnUpBlock2D",),
            block_out_channels=preset.unet_channels,
            layers_per_block=1,
            cross_attention_dim=preset.cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=preset.norm_num_groups,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer.get_vocab()),
                hidden_size=preset.cross_attention_dim,
                intermediate_size=4 * preset.cross_attention_dim,
                num_hidden_layers=preset.text_layers,
                num_attention_heads=preset.text_heads,
                max_position_embeddings=preset.max_prompt_tokens,
                bos_token_id=0,
                eos_token_id=1,
                pad_token_id=1,
            )
        )
    # Stable Diffusion's schedule: the same betas as SD 1.x/2.x ("scaled_linear", 0.00085-0.012).
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )
    return TextToImageModel(
        vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, meta=meta
    )


@dataclass
class T2ITrainResult:
    seconds: float
    vae_losses: list[float]
    losses: list[float]
    resumed_from: int | None = None


def _train_vae(
    model: TextToImageModel, images: torch.Tensor, cfg: T2ITrainConfig, accelerator: Accelerator, progress: bool
) -> list[float]:
    vae = model.vae.to(accelerator.device)
    vae.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = get_scheduler(
        "cosine", opt, num_warmup_steps=min(cfg.warmup_steps, cfg.vae_steps // 10), num_training_steps=cfg.vae_steps
    )
    gen = torch.Generator(device=accelerator.device).manual_seed(cfg.seed + 1)
    losses = []
    params = list(vae.parameters())
    show = progress and is_main_process()
    for _ in tqdm(range(cfg.vae_steps), desc="train-vae", disable=not show, mininterval=1.0, dynamic_ncols=True):
        # The whole batch is drawn in every process (same stream); each trains on its share.
        idx = torch.randint(0, images.shape[0], (cfg.batch_size,), generator=gen, device=accelerator.device)
        noise = torch.randn((cfg.batch_size, *model.latent_shape), generator=gen, device=accelerator.device)
        rows = shard_rows(cfg.batch_size)
        x = to_model_space(images[idx[rows]])
        with accelerator.autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * noise[rows]
            rec = vae.decode(z).sample.float()
        loss = F.mse_loss(rec, x) + cfg.kl_weight * post.kl().mean() / x[0].numel()
        accelerator.backward(loss)
        average_gradients(params)
        accelerator.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(mean_value(loss))
    vae.requires_grad_(False)
    vae.eval()
    # Stable Diffusion's 0.18215: the factor that gives the latents unit variance.
    with torch.no_grad():
        z = torch.cat(
            [vae.encode(to_model_space(images[i : i + 512])).latent_dist.mean for i in range(0, images.shape[0], 512)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / z.float().std()))
    return losses


def train_t2i(
    dataset: Dataset,
    out: str | Path,
    cfg: T2ITrainConfig,
    progress: bool = True,
    overwrite: bool = False,
    checkpoint_dir: str | Path | None = None,
    records: Sequence[Record] | None = None,
) -> tuple[TextToImageModel, T2ITrainResult]:
    """Train a text-to-image model on the dataset's captioned training split; save at ``out`` (all or nothing).

    ``records``: train on these instead (a retrain without deleted records: VAE, tokenizer, text
    encoder and UNet all see only them; the class prompts still name every class of the dataset).
    Resuming: the VAE phase is short and is redone; UNet-phase checkpoints hold the VAE too.
    """
    cfg = cfg.resolved()
    preset = get_t2i_preset(cfg.preset)
    if tuple(dataset.image_shape) != (preset.channels, preset.sample_size, preset.sample_size):
        raise ConfigError(
            f"preset {preset.name!r} models {preset.channels}x{preset.sample_size}x{preset.sample_size} images, "
            f"the dataset holds {'x'.join(map(str, dataset.image_shape))}"
        )
    records = list(dataset.train if records is None else records)
    if not records:
        raise ConfigError("nothing to train on: no training records")
    captions = captions_of(records)
    names, prompts = class_prompts(dataset)
    meta = T2IMeta(
        preset=preset.name,
        image_shape=(preset.channels, preset.sample_size, preset.sample_size),
        class_names=names,
        class_prompts=prompts,
        guidance_scale=cfg.guidance_scale,
        cond_drop_prob=cfg.cond_drop_prob,
    )
    model = build_t2i_model(preset, captions, meta, seed=cfg.seed)
    data = TensorSet.from_records(dataset, records)
    device = pick_device(cfg.device)
    accelerator = make_accelerator(device, cfg.mixed_precision)
    # Several processes (torchrun, accelerate launch): each trains on its share of every batch.
    check_divisible(cfg.batch_size)
    main = is_main_process()
    images = data.images.to(accelerator.device)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else Path(f"{out}.checkpoints")
    ckpt = CheckpointManager(ckpt_dir, {"config": asdict(cfg), "data": data.record_ids, "dataset": dataset.digest()})
    state = ckpt.latest()
    t0 = time.perf_counter()
    if state is None:
        vae_losses = _train_vae(model, images, cfg, accelerator, progress)
    else:
        model.vae.register_to_config(scaling_factor=state["scaling_factor"])
        model.vae.load_state_dict(state["vae"])
        model.vae.requires_grad_(False)
        model.vae.eval()
        vae_losses = list(state["vae_losses"])
    model.to(accelerator.device)

    # Phase 2: UNet + text encoder on the frozen VAE's latents.
    latents = model.encode_images(to_model_space(data.images))
    token_ids = model.tokenize(captions).to(accelerator.device)
    empty_ids = model.tokenize([""]).to(accelerator.device)
    unet, te = model.unet, model.text_encoder
    unet.requires_grad_(True)
    te.requires_grad_(True)
    unet.train()
    te.train()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, fused=accelerator.device.type == "cuda")
    lr_sched = get_scheduler(
        "cosine", opt, num_warmup_steps=min(cfg.warmup_steps, cfg.steps // 10), num_training_steps=cfg.steps
    )
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=0.75) if cfg.ema_decay > 0 else None
    if ema is not None:
        ema.to(accelerator.device)
    fp = ForwardProcess(model.scheduler, accelerator.device)
    gen = torch.Generator(device=accelerator.device).manual_seed(cfg.seed)
    start, losses, resumed_from = 0, [], None
    if state is not None:
        unet.load_state_dict(state["unet"])
        te.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["optimizer"])
        lr_sched.load_state_dict(state["lr_scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        restore_rng(gen, state["rng"])
        start, losses, resumed_from = state["step"], list(state["losses"]), state["step"]
    bar = tqdm(
        total=cfg.steps,
        initial=start,
        desc="train-t2i",
        disable=not (progress and main),
        mininterval=1.0,
        dynamic_ncols=True,
    )
    for step in range(start, cfg.steps):
        idx = torch.randint(0, latents.shape[0], (cfg.batch_size,), generator=gen, device=accelerator.device)
        ids = token_ids[idx]
        drop = torch.rand(cfg.batch_size, generator=gen, device=accelerator.device) < cfg.cond_drop_prob
        ids = torch.where(drop[:, None], empty_ids.expand_as(ids), ids)
        z0 = latents[idx]
        t = torch.randint(0, fp.num_timesteps, (cfg.batch_size,), generator=gen, device=accelerator.device)
        eps = torch.randn(z0.shape, generator=gen, device=accelerator.device)
        rows = shard_rows(cfg.batch_size)  # all rows in one process
        ids, z0, t, eps = ids[rows], z0[rows], t[rows], eps[rows]
        with accelerator.autocast():
            cond = te(ids).last_hidden_state
            pred = unet(fp.add_noise(z0, eps, t), t, encoder_hidden_states=cond).sample.float()
        loss = F.mse_loss(pred, eps)
        accelerator.backward(loss)
        average_gradients(params)
        accelerator.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        losses.append(mean_value(loss))
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.4f}")
        done = step + 1
        if main and cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            ckpt.save(
                done,
                {
                    "vae": model.vae.state_dict(),
                    "scaling_factor": model.scaling_factor,
                    "vae_losses": vae_losses,
                    "unet": unet.state_dict(),
                    "text_encoder": te.state_dict(),
                    "optimizer": opt.state_dict(),
                    "lr_scheduler": lr_sched.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_state(gen),
                    "step": done,
                    "losses": losses,
                },
            )
    bar.close()
    seconds = time.perf_counter() - t0
    if ema is not None:
        ema.copy_to(params)
    for part in (unet, te):
        part.requires_grad_(False)
        part.eval()
    model.clear_prompt_cache()
    model.meta.training = {
        "config": asdict(cfg),
        "dataset_digest": dataset.digest(),
        "train_records": len(data),
        "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])),
        "vae_final_loss": sum(vae_losses[-100:]) / max(1, len(vae_losses[-100:])),
        "seconds": round(seconds, 2),
        "resumed_from": resumed_from,
    }
    if main:  # the other processes of a distributed launch hold the same weights
        with atomic_output_dir(out, overwrite=overwrite) as stage:
            model.save(stage)
            write_json(stage / "train_history.json", {"loss": losses, "vae_loss": vae_losses})
            save_loss_curve({"denoising loss": losses}, stage / "loss_curve.png", title="tiny-sd training")
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    wait_for_everyone()
    return model, T2ITrainResult(seconds=seconds, vae_losses=vae_losses, losses=losses, resumed_from=resumed_from)


def ensure_t2i_model(
    dataset: Dataset, out: str | Path, cfg: T2ITrainConfig, progress: bool = True, overwrite: bool = False
) -> tuple[TextToImageModel, T2ITrainResult | None]:
    """Train unless ``out`` already holds a model of this configuration and dataset (then load it)."""
    import json

    cfg = cfg.resolved()
    out = Path(out)
    if out.exists() and not overwrite:
        model = TextToImageModel.load(out)
        cached = model.meta.training
        if (
            cached.get("config") == json.loads(json.dumps(asdict(cfg)))
            and cached.get("dataset_digest") == dataset.digest()
        ):
            return model, None
        raise UnlearnError(
            f"{out} holds a model trained with another configuration or dataset (pass --overwrite to replace it)"
        )
    return train_t2i(dataset, out, cfg, progress=progress, overwrite=overwrite)
