"""The ``unlearn`` command.

Errors caused by input (a bad dataset, an unknown option, a missing model) print one line
and exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnlearnError

EXIT_USAGE = 2
EXIT_AUDIT_FAILED = 1


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    return k.strip(), v.strip()


def add_override_flags(
    p: argparse.ArgumentParser, what: str, set_flag: str = "--set", file_flag: str = "--options", example: str = ""
) -> None:
    """``--set NAME=VALUE`` (repeatable) and a YAML/JSON file of the same; read them with :func:`overrides_from`."""
    p.add_argument(
        set_flag,
        type=_key_value,
        action="append",
        metavar="NAME=VALUE",
        help=f"{what} (repeatable){', e.g. ' + example if example else ''}",
    )
    p.add_argument(file_flag, metavar="FILE", help=f"YAML/JSON mapping of {what}s ({set_flag} wins)")


def overrides_from(path: str | None, pairs: list[tuple[str, str]] | None) -> dict[str, Any]:
    """Options from a YAML/JSON file, then ``--set NAME=VALUE`` pairs on top."""
    from .settings import read_mapping_file

    out: dict[str, Any] = {}
    if path:
        out = read_mapping_file(path, "options file", "YAML/JSON", "a mapping of option names to values")
    out.update(dict(pairs or []))
    return out


# ---- commands ------------------------------------------------------------------------------


def cmd_build_digits(args: argparse.Namespace) -> int:
    from .data import DigitsConfig, build_digits

    cfg = DigitsConfig(
        holdout_fraction=args.holdout_fraction,
        num_subjects=args.subjects,
        seed=args.seed,
        canaries=args.canaries,
        canary_copies=args.canary_copies,
        canary_label=args.canary_label,
        holdout_canaries=args.holdout_canaries,
    )
    ds = build_digits(args.out, cfg, overwrite=args.overwrite)
    print(
        f"wrote {len(ds)} records to {args.out} ({len(ds.train)} train, {len(ds.holdout)} hold-out; "
        f"digest {ds.digest()[:12]})"
    )
    return 0


def cmd_dataset_info(args: argparse.Namespace) -> int:
    from collections import Counter

    from .data import load_dataset

    ds = load_dataset(args.dataset)
    info = {
        "path": str(ds.root),
        "records": len(ds),
        "train": len(ds.train),
        "holdout": len(ds.holdout),
        "subjects": len({r.subject_id for r in ds.records if r.subject_id}),
        "labels": dict(sorted(Counter(r.label for r in ds.train).items(), key=lambda kv: str(kv[0]))),
        "image_shape": list(ds.image_shape),
        "digest": ds.digest(),
    }
    print(json.dumps(info, indent=2, default=str))
    return 0


def _targets(args: argparse.Namespace) -> Any:
    from .data import ForgetTargets

    return ForgetTargets.build(
        record_ids=args.forget_records or [],
        subject_ids=args.forget_subjects or [],
        labels=args.forget_labels or [],
        caption_pattern=args.forget_caption,
    )


def cmd_dataset_select(args: argparse.Namespace) -> int:
    from .data import load_dataset, select

    sel = select(load_dataset(args.dataset), _targets(args), strict=not args.allow_unknown)
    print(json.dumps(sel.summary(), indent=2))
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from .models import TrainConfig

    return TrainConfig(
        preset=args.preset,
        conditional=not args.unconditional,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        mixed_precision=args.mixed_precision,
    ).resolved()


def cmd_train_base(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .models import ensure_base_model
    from .t2i.training import T2I_PRESETS

    if args.preset in T2I_PRESETS:
        return _train_t2i(args)
    cfg = _train_config(args)
    model, result = ensure_base_model(
        load_dataset(args.dataset),
        args.out,
        cfg,
        progress=not args.quiet,
        overwrite=args.overwrite,
        checkpoint_dir=args.checkpoint_dir,
    )
    if result is None:
        print(
            f"{args.out}: base model already trained with this configuration and dataset (cached); "
            "pass --overwrite to train again"
        )
        return 0
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    print(
        f"trained {model.num_parameters() / 1e6:.2f}M-parameter {cfg.preset} model for {cfg.steps} steps in "
        f"{result.seconds:.0f}s ({result.steps_per_second:.1f} steps/s{resumed}); saved to {args.out}"
    )
    return 0


def _train_t2i(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .t2i import T2ITrainConfig, ensure_t2i_model

    if args.unconditional:
        raise ConfigError(f"preset {args.preset!r} is a text-to-image model: it is conditioned on captions")
    cfg = T2ITrainConfig(
        preset=args.preset,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        mixed_precision=args.mixed_precision,
    ).resolved()
    model, result = ensure_t2i_model(
        load_dataset(args.dataset), args.out, cfg, progress=not args.quiet, overwrite=args.overwrite
    )
    if result is None:
        print(f"{args.out}: {cfg.preset} model already trained with this configuration and dataset (cached)")
        return 0
    print(
        f"trained {cfg.preset}: VAE {cfg.vae_steps} steps, UNet {model.num_parameters() / 1e6:.2f}M + text encoder "
        f"{model.num_parameters('text_encoder') / 1e6:.2f}M for {cfg.steps} steps in {result.seconds:.0f}s; "
        f"saved to {args.out} (a StableDiffusionPipeline folder)"
    )
    return 0


def cmd_train_evaluator(args: argparse.Namespace) -> int:
    from .audit import train_evaluator
    from .data import load_dataset

    if args.members is not None and args.members < 1:
        raise ConfigError(f"--members must be >= 1, got {args.members}")
    # Unset, train_evaluator's own default applies (audit.evaluator.MEMBERS), not a copy of it here.
    members = {} if args.members is None else {"members": args.members}
    ev = train_evaluator(
        load_dataset(args.dataset), epochs=args.epochs, seed=args.seed, progress=not args.quiet, **members
    )
    ev.save(args.out, overwrite=args.overwrite)
    accs = ", ".join(f"{a:.3f}" for a in ev.meta.member_holdout_accuracy or [])
    print(f"evaluator saved to {args.out} (hold-out accuracy {ev.meta.holdout_accuracy:.3f}; members {accs})")
    return 0


def cmd_algorithms(args: argparse.Namespace) -> int:
    from dataclasses import MISSING, fields

    from .unlearning import REGISTRY
    from .unlearning.base import get_preset

    if args.preset:
        if not args.name:
            raise ConfigError("--preset needs an algorithm, e.g. `unlearn algorithms erasediff --preset paper`")
        preset = get_preset(args.name, args.preset)
        print(f"{args.name} --preset {args.preset}: {preset.description}")
        for key, value in preset.values.items():
            print(f"    {key} = {value!r}" + (f"    # {preset.sources[key]}" if key in preset.sources else ""))
        for note in preset.notes:
            print(f"  note: {note}")
        print(f"apply: unlearn erase --algorithm {args.name} --preset {args.preset} ... (--set NAME=VALUE still wins)")
        return 0
    for name, cls in sorted(REGISTRY.items()):
        if args.name and name != args.name:
            continue
        print(f"{name}: {cls.summary}")
        if args.name or args.verbose:
            for f in fields(cls.config_cls):
                default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                print(f"    {f.name} = {default!r}")
            if cls.presets:
                print(f"    presets: {', '.join(sorted(cls.presets))} (see --preset NAME)")
    from .t2i.erase import T2I_REGISTRY

    # Text-to-image implementations (used when --model is a StableDiffusionPipeline folder).
    for name, t2i_cls in sorted(T2I_REGISTRY.items()):
        if args.name and name != args.name:
            continue
        print(f"{name} [text-to-image]: {t2i_cls.summary}")
        if args.name or args.verbose:
            for f in fields(t2i_cls.config_cls):
                print(f"    {f.name} = {f.default!r}")
    if args.name and args.name not in REGISTRY and args.name not in T2I_REGISTRY:
        known = sorted({*REGISTRY, *T2I_REGISTRY})
        raise ConfigError(f"unknown algorithm {args.name!r} (known: {', '.join(known)})")
    return 0


def cmd_erase(args: argparse.Namespace) -> int:
    from .t2i.model import is_text_to_image_folder
    from .unlearning import erase

    overrides = overrides_from(args.options, args.set)
    if is_text_to_image_folder(args.model):
        return _erase_t2i(args, overrides)
    if args.forget_prompt or args.anchor_prompt or args.retain_prompt:
        raise ConfigError("--forget-prompt/--anchor-prompt/--retain-prompt need a text-to-image model; "
                          f"{args.model} is class-conditional")
    if not args.dataset:
        raise ConfigError("--dataset is required: the dataset the model was trained on")
    if args.preset:
        overrides = {"preset": args.preset, **overrides}
    targets = _targets(args)
    result, record = erase(
        args.model,
        args.dataset,
        targets,
        args.algorithm,
        args.out,
        overrides=overrides,
        overwrite=args.overwrite,
        progress=not args.quiet,
        checkpoint_dir=args.checkpoint_dir,
        strict=not args.allow_unknown,
    )
    sel = record["selection"]
    stop = f"; stopped at step {result.stop['step']} ({result.stop['reason']})" if result.stop else ""
    print(
        f"{args.algorithm}: forgot {sel['forget']} records ({sel['forget_distinct_images']} distinct images, "
        f"scope {sel['scope']}) in {result.steps} steps, {result.seconds:.1f}s{stop}; saved to {args.out}"
    )
    if still := sel.get("forget_still_retained"):
        print(
            f"note: {len(still)} of them ({', '.join(still[:5])}{', ...' if len(still) > 5 else ''}) share their "
            "image with retained records: deleted from the data, but the model keeps learning the image from "
            "the other records (not unlearned, not audited)"
        )
    if result.stop and result.stop.get("within_noise"):
        st = result.stop
        print(
            f"note: the forget records' denoising error stalled at {st['ratio']:.3f}x the hold-out's, short of "
            f"the level {st['level']:.2f}x but within its own noise (floor {st['noise_floor']:.3f}x: "
            f"{st['level_spread']:.3f} bootstrap sd over these images): they already read as records never "
            "trained on; the audit says whether anything measurable remained"
        )
    return 0


def _erase_t2i(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from .t2i.run import erase_t2i

    if args.preset:
        raise ConfigError("--preset names a class-conditional configuration; text-to-image options go in --set")
    result, record = erase_t2i(
        args.model,
        args.dataset,
        _targets(args),
        args.algorithm,
        args.out,
        forget_prompts=args.forget_prompt or [],
        anchor_prompts=args.anchor_prompt or [],
        retain_prompts=args.retain_prompt or [],
        overrides=overrides,
        overwrite=args.overwrite,
        progress=not args.quiet,
        strict=not args.allow_unknown,
        checkpoint_dir=args.checkpoint_dir,
    )
    sel = record["selection"]
    what = (
        f"{sel['forget']} records by caption ({len(sel['anchors'])} caption(s) -> anchors {sel['anchors']})"
        if sel["mode"] == "caption"
        else f"prompt(s) {sel['forget_prompts']} (anchors {sel['anchor_prompts']})"
    )
    print(
        f"{args.algorithm} (text-to-image): forgot {what} in {result.steps} steps, {result.seconds:.1f}s, "
        f"{result.trainable_parameters / 1e6:.3f}M trainable parameters; saved to {args.out}"
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .audit import AuditParams, run_audit
    from .audit.gates import threshold_text
    from .unlearning.base import build_config

    overrides = overrides_from(args.params, args.set)
    from .t2i.model import is_text_to_image_folder

    if is_text_to_image_folder(args.model) or is_text_to_image_folder(args.base):
        if args.original:
            raise ConfigError("--original is not supported for text-to-image models yet; leave it out")
        return _audit_t2i(args, overrides)
    if args.judge:
        raise ConfigError("--judge is for text-to-image models; class-conditional audits use --evaluator")
    params = build_config(AuditParams, overrides, where="the audit")
    result = run_audit(
        args.base,
        args.model,
        args.dataset,
        _targets(args),
        args.out,
        params=params,
        evaluator_dir=args.evaluator,
        retrain_dir=args.retrain,
        overwrite=args.overwrite,
        progress=not args.quiet,
        strict=not args.allow_unknown,
        device=args.device,
        original_dir=args.original,
    )
    rec = result.record
    console = Console()
    table = Table(
        title=f"audit of {args.model} ({rec['selection']['scope']} scope, {rec['selection']['forget']} forget records)"
    )
    for col in ("metric", "unlearned", "base", *(("retrain",) if args.retrain else ()), "gate", "result"):
        table.add_column(col, justify="left" if col in ("metric", "gate") else "right")
    for m in result.metrics:
        rule = threshold_text(m.threshold)
        status = _STATUS_COLOUR.get(m.status, "") + m.status
        cells = [m.name, _num(m.value), _num(m.base), *((_num(m.retrain),) if args.retrain else ()), rule, status]
        table.add_row(*cells)
    console.print(table)
    for m in result.metrics:
        if m.status == "INCONCLUSIVE":
            console.print(f"[yellow]{m.name} is inconclusive: {m.inconclusive}")
    if rec.get("relaxed"):
        from .audit.gates import relaxed_summary

        console.print(f"[yellow]settings looser than the defaults: {relaxed_summary(rec['relaxed'])}")
    verdict = "[bold green]PASS" if result.passed else "[bold red]FAIL"
    console.print(f"verdict: {verdict}[/]  report: {Path(args.out) / 'report.html'}  ({rec['seconds']:.0f}s)")
    return 0 if result.passed else EXIT_AUDIT_FAILED


def _audit_t2i(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    from rich.console import Console

    from .audit.gates import threshold_text
    from .t2i.audit import T2IAuditParams, audit_request
    from .unlearning.base import build_config

    params = build_config(T2IAuditParams, overrides, where="the text-to-image audit")
    result = audit_request(
        args.base,
        args.model,
        args.dataset,
        _targets(args),
        args.out,
        forget_prompts=args.forget_prompt or [],
        params=params,
        evaluator_dir=args.evaluator,
        overwrite=args.overwrite,
        progress=not args.quiet,
        strict=not args.allow_unknown,
        device=args.device,
        judge=args.judge,
    )
    rec = result.record
    console = Console()
    for m in result.metrics:
        if m.threshold is None:
            continue
        status = _STATUS_COLOUR.get(m.status, "") + m.status
        console.print(f"{m.name:<32} {m.value:.4g} {threshold_text(m.threshold, 4)}  {status}")
    for m in result.metrics:
        if m.status == "INCONCLUSIVE":
            console.print(f"[yellow]{m.name} is inconclusive: {m.inconclusive}")
    for c, v in rec["adversarial_prompt"]["success"].items():
        plain = rec["forgotten_probability"][c]
        console.print(f"adversarial prompt, class {c}: success {v:.3f} (plain prompt {plain:.3f})")
    for c, o in rec["over_erasure"].items():
        console.print(
            f"over-erasure, neighbour {o['neighbour']} of {c}: accuracy {o['accuracy']:.3f} "
            f"(base {o['accuracy_base']:.3f})"
        )
    u = rec["utility"]
    console.print(f"FID ({u['features']} features) {u['fid']:.3g} (base {u['fid_base']:.3g}), KID {u['kid']:.3g}")
    if u["clip_score"] is not None:
        console.print(f"CLIP score {u['clip_score']:.2f} (base {u['clip_score_base']:.2f})")
    verdict = "[bold green]PASS" if result.passed else "[bold red]FAIL"
    console.print(f"verdict: {verdict}[/]  report: {Path(args.out) / 'report.html'}  ({rec['seconds']:.0f}s)")
    return 0 if result.passed else EXIT_AUDIT_FAILED


_STATUS_COLOUR = {"PASS": "[green]", "FAIL": "[red]", "INCONCLUSIVE": "[yellow]"}


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from .t2i.model import TextToImageModel, is_text_to_image_folder
    from .utils import pick_device
    from .viz import save_grid

    if is_text_to_image_folder(args.model):
        t2i = TextToImageModel.load(args.model, device=pick_device(args.device))
        if args.labels:
            rows = [t2i.meta.prompt_for(c) for c in args.labels]
        else:
            rows = list(args.prompt or t2i.meta.class_prompts)
        if not rows:
            raise ConfigError("this model has no class prompts: give --prompt TEXT (repeatable)")
        images = t2i.sample(
            [r for r in rows for _ in range(args.per_class)],
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            progress=not args.quiet,
        )
        nrow = args.per_class
    elif args.prompt:
        raise ConfigError(f"--prompt needs a text-to-image model; {args.model} is not one")
    else:
        images, rows, nrow = _sample_class_model(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, got {out}")
    save_grid(images, out, nrow=nrow, scale=args.scale, row_labels=rows)
    if args.tensor_out:
        torch.save(images, args.tensor_out)
    print(f"wrote {images.shape[0]} samples to {out}")
    return 0


def _sample_class_model(args: argparse.Namespace) -> tuple[Any, list[str] | None, int]:
    import torch

    from .models import DiffusionModel, class_grid_labels, sample
    from .utils import pick_device

    model = DiffusionModel.load(args.model, device=pick_device(args.device))
    if model.conditional:
        if args.labels:
            labels = torch.tensor([c for c in args.labels for _ in range(args.per_class)])
            rows = [model.meta.class_names[c] if c < len(model.meta.class_names) else "null" for c in args.labels]
        else:
            labels = class_grid_labels(model, args.per_class)
            rows = list(model.meta.class_names)
        nrow = args.per_class
    else:
        if args.labels:
            raise ConfigError("--labels needs a class-conditional model; this one is unconditional")
        labels, rows, nrow = None, None, max(1, int(args.num_samples**0.5))
    return (
        sample(
            model,
            labels,
            num_samples=args.num_samples,
            steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            progress=not args.quiet,
        ),
        rows,
        nrow,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(
        Path(args.workspace), forget_label=args.forget_label, base_steps=args.base_steps, progress=not args.quiet
    )


# ---- parser -------------------------------------------------------------------------------


def _add_targets(p: argparse.ArgumentParser, prompts: bool = False) -> None:
    g = p.add_argument_group("what to forget (any combination; the forget set is their union)")
    g.add_argument("--forget-labels", type=_int_list, metavar="L[,L]", help="class labels to erase")
    g.add_argument("--forget-subjects", type=_str_list, metavar="S[,S]", help="data owners whose records to erase")
    g.add_argument("--forget-records", type=_str_list, metavar="R[,R]", help="record IDs to erase")
    g.add_argument("--forget-caption", metavar="REGEX", help="erase records whose caption matches")
    g.add_argument(
        "--allow-unknown", action="store_true", help="proceed when some targets match nothing (default: refuse)"
    )
    if not prompts:
        return
    g.add_argument(
        "--forget-prompt",
        action="append",
        metavar="TEXT",
        help="text-to-image: erase a concept with no images given (repeatable); the model generates the forget set",
    )
    g.add_argument(
        "--anchor-prompt",
        action="append",
        metavar="TEXT",
        help="text-to-image: what the erased prompts should draw instead (repeatable; default: the kept "
        "caption or prompt whose images are nearest)",
    )
    g.add_argument(
        "--retain-prompt",
        action="append",
        metavar="TEXT",
        help="text-to-image with --forget-prompt: prompts to preserve (default: the model's other class prompts)",
    )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="unlearn", description="Erase training data from diffusion models, audit it, record it."
    )
    parser.add_argument("--version", action="version", version=f"unlearn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ds = sub.add_parser("dataset", help="build, inspect and select from datasets")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    p = ds_sub.add_parser("build-digits", help="write the scikit-learn digits dataset folder")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout-fraction", type=float, default=0.1)
    p.add_argument("--subjects", type=int, default=120, help="number of data owners")
    p.add_argument("--canaries", type=int, default=3, help="distinct marked images owned by one subject")
    p.add_argument("--canary-copies", type=int, default=40, help="training copies of each canary")
    p.add_argument("--canary-label", type=int, default=7)
    p.add_argument("--holdout-canaries", type=int, default=12, help="marked hold-out images (never trained)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_build_digits)
    p = ds_sub.add_parser("info", help="validate a dataset folder and summarise it")
    p.add_argument("dataset")
    p.set_defaults(func=cmd_dataset_info)
    p = ds_sub.add_parser("select", help="show what a deletion would select, without changing anything")
    p.add_argument("dataset")
    _add_targets(p)
    p.set_defaults(func=cmd_dataset_select)

    p = sub.add_parser("train-base", help="train a base diffusion model on a dataset's training split")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="digits")
    p.add_argument("--unconditional", action="store_true", help="train without class conditioning")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--checkpoint-dir", help="default: OUT.checkpoints; a restarted run resumes from it")
    p.add_argument("--device", default="auto")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_base)

    p = sub.add_parser("train-evaluator", help="train the classifier that judges generated samples")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--members", type=int, default=None, help="judges averaged, trained with seeds SEED, SEED+1, ... (default 3)"
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_evaluator)

    p = sub.add_parser("algorithms", help="list unlearning algorithms and their options")
    p.add_argument("name", nargs="?")
    p.add_argument("-v", "--verbose", action="store_true", help="show every algorithm's options")
    p.add_argument("--preset", metavar="NAME", help="print a named published configuration and its sources")
    p.set_defaults(func=cmd_algorithms)

    p = sub.add_parser("erase", help="unlearn records, subjects or classes from a model")
    p.add_argument("--algorithm", default="erasediff", help="see `unlearn algorithms`")
    p.add_argument("--model", required=True, help="base model folder")
    p.add_argument("--dataset", help="the dataset the model was trained on (optional for --forget-prompt)")
    p.add_argument("--out", required=True, help="folder for the unlearned model")
    _add_targets(p, prompts=True)
    add_override_flags(p, "algorithm option", example="--set steps=200 --set lam=0.5")
    p.add_argument("--preset", metavar="NAME", help="start from a named configuration, e.g. erasediff's paper")
    p.add_argument("--checkpoint-dir", help="default: OUT.checkpoints; a restarted run resumes from it")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser("audit", help="audit an unlearned model: forgetting, memorization, utility; exit 1 on FAIL")
    p.add_argument("--base", required=True, help="the model before unlearning")
    p.add_argument("--model", required=True, help="the unlearned model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="folder for audit.json, report.md/html and pictures")
    _add_targets(p, prompts=True)
    p.add_argument("--evaluator", help="evaluator folder (default: train one on the dataset)")
    p.add_argument(
        "--judge",
        help="text-to-image models: torchscript:PATH[@SIZE] (a classifier over the class prompts) or "
        "clip:FOLDER (a local CLIP: zero-shot, plus the CLIP score) instead of the evaluator",
    )
    p.add_argument(
        "--retrain",
        nargs="+",
        help="a model retrained without the forget set, reported as the reference; several (other training "
        "seeds): the report also states where the unlearned model sits among them, per forget record",
    )
    p.add_argument(
        "--original",
        help="the first model of --base's lineage, when --base has absorbed earlier deletions: a model no worse "
        "than it passes the utility gates whatever its parent drew",
    )
    add_override_flags(p, "audit parameter", file_flag="--params", example="--set samples_per_class=50")
    p.add_argument("--device", default="auto", help="auto: CUDA when present (sampling in bf16), else CPU")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("sample", help="generate a PNG grid of samples")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--labels", type=_int_list, help="classes to draw (default: every class, one row each)")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="text-to-image: a prompt per row (repeatable)")
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=64, help="for unconditional models")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of the grid")
    p.add_argument("--tensor-out", help="also save the samples as a torch tensor file")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="the digits story: data, base model, erase a class, before/after")
    p.add_argument("--workspace", default="demo-cli", help="folder for the data, models and pictures")
    p.add_argument("--forget-label", type=int, default=3)
    p.add_argument("--base-steps", type=int, default=2000)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("workspace", help="the git + DVC workspace where dataset versions live")
    ws_sub = p.add_subparsers(dest="workspace_command", required=True, metavar="ACTION")
    w = ws_sub.add_parser("init", help="create a workspace: git, DVC, dvc.yaml, params.yaml (optionally dvc repro)")
    w.add_argument("path")
    w.add_argument("--repro", action="store_true", help="also run the DVC stages (data, base model)")
    w.add_argument("--dvc-cache", help="use a shared DVC cache folder")
    w.set_defaults(func=cmd_workspace_init)

    p = ds_sub.add_parser("purge", help="write a dataset version without the records a deletion ledger names")
    p.add_argument("--source", required=True)
    p.add_argument("--ledger", required=True, help="deletions.jsonl")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_dataset_purge)

    p = sub.add_parser("registry", help="the MLflow model registry")
    reg_sub = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    r = reg_sub.add_parser("register-base", help="register a workspace's base model as production")
    r.add_argument("--workspace", default="workspace")
    r.add_argument("--settings")
    r.add_argument("--model", help="the model folder (default: the workspace's models/base); any family")
    r.add_argument("--name", help="the registered model's name (default: the settings' model_name)")
    r.set_defaults(func=cmd_register_base)
    r = reg_sub.add_parser(
        "prune",
        help="retire versions that still hold deleted data (retention policy): aliases, weights and exports go, "
        "a tombstone stays",
    )
    r.add_argument("--dry-run", action="store_true", help="list what would be retired; change nothing")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_registry_prune)
    r = reg_sub.add_parser(
        "rollback", help="point production at an earlier version (refused if it holds data a deletion erased)"
    )
    r.add_argument("version")
    r.set_defaults(func=cmd_registry_rollback)
    for cmd in reg_sub.choices.values():
        if cmd.prog.split()[-1] != "register-base":
            cmd.add_argument("--workspace")
            cmd.add_argument("--settings")

    _load_plugins(sub)
    return parser


def _load_plugins(sub: Any) -> None:
    """Commands contributed by other packages (the kfp pipeline) via the ``unlearn.commands`` entry point."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="unlearn.commands"):
        try:
            ep.load()(sub)
        except ImportError as err:  # a plugin whose dependencies are missing must not break the core CLI
            print(f"unlearn: warning: commands {ep.name!r} unavailable ({err})", file=sys.stderr)


def cmd_workspace_init(args: argparse.Namespace) -> int:
    from .workspace import Workspace

    ws = Workspace.init(args.path)
    if args.dvc_cache:
        Path(args.dvc_cache).mkdir(parents=True, exist_ok=True)
        ws.dvc("cache", "dir", str(Path(args.dvc_cache).resolve()))
        ws.git("add", "-A")
        ws.git("commit", "-q", "-m", "use the shared DVC cache")
    if args.repro:
        ws.repro(stream=True)
    print(f"workspace {ws.root} at {ws.head()[:12]}")
    return 0


def cmd_dataset_purge(args: argparse.Namespace) -> int:
    from .data.purge import purge_dataset

    ds, removed = purge_dataset(args.source, args.ledger, args.out, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(ds)} records ({removed} deleted)")
    return 0


def cmd_register_base(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .settings import Settings
    from .tracking import register_base_model
    from .workspace import Workspace

    settings = Settings.load(args.settings, workspace=args.workspace)
    if args.name:
        settings = settings.replace(model_name=args.name)
    ws = Workspace(settings.workspace, settings.dataset_path)
    ws.check()
    ds = load_dataset(ws.root / settings.dataset_path)
    rev = ws.head()
    from .tracking.retention import base_absorbed

    model = Path(args.model) if args.model else ws.root / "models" / "base"
    if not (model / "unlearn_model.json").is_file():
        raise ConfigError(f"{model} is not an unlearn model folder (no unlearn_model.json): train it with train-base")
    absorbed = base_absorbed(ws.ledger(rev), model, ds.digest())
    mv = register_base_model(settings, model, rev, ds.digest(), len(ds), str(ws.root), absorbed=absorbed)
    print(f"registered {settings.model_name} version {mv.version} (alias production)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .redact import install_log_redaction, redact_text

    parser = build_parser()
    args = parser.parse_args(argv)
    # Credentials in a URI (MLflow, the state database, S3) never reach the console or a log file.
    install_log_redaction()
    # MLflow's INFO lines (creating tables, waiting for a version) would break the one-line errors.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    try:
        return int(args.func(args) or 0)
    except UnlearnError as err:
        print(f"unlearn: error: {redact_text(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("unlearn: interrupted", file=sys.stderr)
        return 130


def cmd_registry_prune(args: argparse.Namespace) -> int:
    from .compliance.erasure import apply_retention, finish_erasures
    from .settings import Settings

    settings = Settings.load(args.settings, workspace=args.workspace)
    if not args.dry_run:
        finish_erasures(settings)
    items = apply_retention(settings, dry_run=args.dry_run)
    if args.json:
        print(json.dumps([i.to_dict() for i in items], indent=1))
        return 0
    verb = "would retire" if args.dry_run else "retired"
    for item in items:
        aliases = f" (aliases removed: {', '.join(item.aliases)})" if item.aliases else ""
        print(f"{verb} {settings.model_name} v{item.version}: {item.reason}{aliases}")
    if not items:
        print(f"nothing to retire (grace period {settings.retention_grace_days:g} days)")
    return 0


def cmd_registry_rollback(args: argparse.Namespace) -> int:
    from .settings import Settings
    from .state import StateStore
    from .tracking import PRODUCTION, configure, set_alias
    from .tracking.retention import check_servable

    settings = Settings.load(args.settings, workspace=args.workspace)
    client = configure(settings)
    check_servable(client, StateStore.open(settings), settings.model_name, args.version)
    set_alias(client, settings.model_name, PRODUCTION, args.version)
    print(f"{settings.model_name}: production is version {args.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
