"""Successive deletions: classes and a subject, one after another, each from the previous model.

    OMP_NUM_THREADS=1 python benchmarks/bench_successive.py --base DIR --evaluator DIR \\
        [--sequence 3 5 subject 8 1 6] [--path cli|pipeline] [--variant full|exclude-only|none]
        [--per-class 100] [--workdir DIR] [--set NAME=VALUE ... --tag NAME]

``--path cli`` (default) calls ``erase`` (the library call behind ``unlearn erase``) with
EraseDiff's defaults on the *same* dataset folder every time: the CLI case, where the dataset
still holds the earlier deletions and only the model's lineage keeps them out. ``--path pipeline``
files each deletion as a request and runs it through the compliance pipeline (``kfp.local``,
subprocess runner) in a fresh workspace: purge on the run's git ref, EraseDiff, the full default
audit, registration; the next request starts from the ``production`` version the previous run
left, whatever its audit said. ``--base`` is only used by the CLI path (the pipeline trains the
workspace's own base model through DVC).

A ``subject`` entry deletes the dataset's canary subject (``subject-canary``: marked 7s copied
into the training set). After each step the evaluator (``--evaluator``, trained on the full
digits data, so no path judges itself) scores ``--per-class`` samples per class (25 DDIM steps,
the model's guidance, fixed seed): P(c) on samples conditioned on c for every class erased so
far, the accuracy on the classes never erased (``kept``) against the base model's, and the FID of
those classes' samples (the judge's features, as the audit's ``fid_ratio`` gate) with its ratio to
the previous model's. Once the
subject is deleted, every later model is also asked for the audit's extraction test on the
canary records (500 samples of their label, alpha 0.5 of the 50-NN training distance): how many
records can still be regenerated. Each class erasure on the CLI path also gets ``audit_rule``: the
judge's floor (its P of the erased class on the parent's own samples of the destination), the share
of the erased class's samples drawn as the destination, and the limit the audit's class gate would
hold P to (``benchmarks/README.md``, "The judge's floor"; ``judge_floors.py`` adds it to older files).

``--set`` changes EraseDiff options from their defaults on both paths (a variant under study: the
pipeline gets them as the run's algorithm options); give it a ``--tag`` so the defaults' results
file stays. With ``--set-scope class`` they apply to the class deletions only, and the subject's
deletion keeps the record defaults (``lam``, ``lr`` and ``steps`` have a default per scope: ``--set
lam=3`` on the subject's deletion replaces its 0.3, where its escalation starts and stays at least).

Variants (CLI path): ``full`` (the lineage excludes earlier deletions from the retain set and
remap targets and EraseDiff keeps erased classes forgotten), ``exclude-only``
(``keep_forgotten=false``), ``none`` (the lineage's deletions are stripped from each parent first:
the behaviour before lineage existed). Writes
``benchmarks/results/successive-<path>-<variant>-<device>.json`` (``successive-<variant>-`` for the
CLI path, as before).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import (  # benchmarks/ is the script's folder: on sys.path
    add_erasediff_variant_flags,
    canaries_of,
    erasediff_options,
    machine,
)

from unlearn_lib.audit import Evaluator, EvaluatorFeatures, RealReference, class_figures, generate_class_samples
from unlearn_lib.audit.gates import AuditParams, Metric
from unlearn_lib.audit.run import _forgotten_gate_limits, extraction_of
from unlearn_lib.data import DigitsConfig, ForgetTargets, build_digits, load_dataset
from unlearn_lib.data.tensors import TensorSet
from unlearn_lib.models import DiffusionModel
from unlearn_lib.models.diffusion import META_NAME
from unlearn_lib.unlearning import erase
from unlearn_lib.unlearning.erasediff import SCOPE_DEFAULTS

SAMPLE_SEED = 123
SUBJECT = "subject"


def parse_sequence(tokens: list[str]) -> list[int | str]:
    out: list[int | str] = []
    for tok in tokens:
        if tok == SUBJECT:
            out.append(SUBJECT)
        elif tok.isdigit() and 0 <= int(tok) <= 9:
            out.append(int(tok))
        else:
            raise SystemExit(f"--sequence: {tok!r} is neither a digit class 0-9 nor {SUBJECT!r}")
    if len(set(out)) != len(out):
        raise SystemExit("--sequence names a deletion twice")
    return out


class Judge:
    """The same evaluator, samples and extraction test for every model of a run."""

    def __init__(
        self, evaluator: Evaluator, dataset_dir: Path, per_class: int, kept: list[int], seed: int = SAMPLE_SEED
    ) -> None:
        self.evaluator, self.per_class, self.kept, self.seed = evaluator, per_class, kept, seed
        self.params = AuditParams()
        ds = load_dataset(dataset_dir)
        found = canaries_of(ds, self.params.extraction_k)
        if found is None:
            raise SystemExit(f"{dataset_dir} holds no record of {DigitsConfig().canary_subject}: the judge needs them")
        self.canaries, self.neighbourhood = found
        # FID of the never-erased classes' samples, on the judge's features, as the audit's
        # fid_ratio gate measures it: the guided "keep forgotten" variants held every earlier class
        # by this judge's P and still failed that gate in the pipeline (benchmarks/README.md, "The
        # earlier classes' term as a constraint"). One reference for the whole run, so every step's
        # FID compares with every other's (the audit's own follows the parent's retained classes).
        real = TensorSet.from_records(ds, [r for r in ds.train if r.label in kept]).distinct()
        self.real = RealReference(EvaluatorFeatures(evaluator), real.images, seed=self.params.seed)

    def extracted(self, model: DiffusionModel) -> dict[str, Any]:
        res, _ = extraction_of(model, self.canaries, self.neighbourhood, self.params)
        return {"extracted": res.extracted, "records": len(res.ratios), "min_ratio": round(min(res.ratios), 3)}

    def __call__(self, model: DiffusionModel, erased: list[int], subject_deleted: bool) -> dict[str, Any]:
        samples = generate_class_samples(model, self.evaluator, self.per_class, seed=self.seed)
        figs = class_figures(samples, erased)
        probs = {c: samples.for_class(c)[1] for c in samples.classes}
        out: dict[str, Any] = {
            "p_erased": {str(c): round(figs.forgotten_probability[c], 4) for c in erased},
            # The judge's mean probabilities on each class's samples (row: the class asked for):
            # the next step's floor is read from this model's row of the erased class's destination.
            "mean_probs": {str(c): [round(float(v), 4) for v in p.mean(0)] for c, p in probs.items()},
            # What the erased classes are drawn as: the audit's floor applies when mostly the destination.
            "drawn_as": {str(c): drawn_as(probs[c]) for c in erased},
            "kept_accuracy": round(sum(figs.accuracy[c] for c in self.kept) / len(self.kept), 4),
            "accuracy": {str(c): round(a, 4) for c, a in figs.accuracy.items()},
            "kept_fid": round(self.real.measure(samples.images_of(self.kept))["fid"], 3),
        }
        if subject_deleted or not erased:  # the base model's figure is the one to compare with
            out["canaries"] = self.extracted(model)
        return out


def drawn_as(probs: torch.Tensor) -> dict[str, float]:
    """The share of samples the judge takes for each class (those it takes any for)."""
    counts = torch.bincount(probs.argmax(-1), minlength=probs.shape[1]).tolist()
    return {str(k): round(n / len(probs), 4) for k, n in enumerate(counts) if n}


def audit_rule(parent: dict[str, Any], step: dict[str, Any], mapping: dict[str, int]) -> dict[str, Any]:
    """Each class erased at this step as the audit's class gate reads it: P against the judge's floor.

    The floor is the judge's P(f) on the parent's own samples of f's destination: what an erasure
    that draws f exactly as the parent draws the destination reads (the audit's
    ``forgotten_probability_floor``). Where the erased class is mostly drawn as its destination and
    the floor plus the margin is above the gate, the audit judges against that instead, capped by
    the hard limit; elsewhere the gate stands.

    Where it differs from the audit: the destination is EraseDiff's mapping (the audit takes the
    retained class the judge most often reads the erased class's samples as); P is the bench's, on
    ``--per-class`` samples, with no INCONCLUSIVE (the audit reads ``forgotten_samples``, 500, and
    calls a pass within its sampling error inconclusive); the grid is the bench's (its own seed).
    """
    out: dict[str, Any] = {}
    for f, dest in mapping.items():
        floor = parent["mean_probs"][str(dest)][int(f)]
        share = step["drawn_as"][str(f)].get(str(dest), 0.0)
        value = step["p_erased"][str(f)]
        # The audit's own rule, one class at a time (the limits of its class gate).
        details = {"floor": {str(f): floor}, "destination_share": {str(f): share}}
        m = _forgotten_gate_limits(
            Metric("forgotten_probability", "efficacy", value, ""),
            Metric("forgotten_probability_floor", "efficacy", floor, "", details=details),
            {str(f): value},
            AuditParams(),
        )
        assert m.threshold is not None
        limit = m.threshold["labels"][str(f)]["limit"] if "labels" in m.threshold else m.threshold["value"]
        out[str(f)] = {"destination": int(dest), "floor": floor, "destination_share": share,
                       "limit": round(limit, 4), "held": bool(m.passed)}  # fmt: skip
    return out


def step_folder(work: Path, variant: str, done: list[str]) -> Path:
    """The CLI path's folder of the model after the deletions ``done`` (in order)."""
    return work / f"{variant}-no-{'-'.join(done)}"


def strip_deletions(model_dir: Path) -> None:
    """Forget the lineage's deletions (variant ``none``): what erase saw before lineage existed."""
    meta = json.loads((model_dir / META_NAME).read_text())
    meta.get("lineage", {}).pop("deletions", None)
    (model_dir / META_NAME).write_text(json.dumps(meta, indent=2))


def targets_of(step: int | str) -> ForgetTargets:
    if step == SUBJECT:
        return ForgetTargets.build(subject_ids=[DigitsConfig().canary_subject])
    return ForgetTargets.build(labels=[int(step)])


def step_overrides(args: argparse.Namespace, overrides: dict, step: int | str) -> dict:
    """The options a deletion runs with: ``--set-scope class`` leaves the subject's at its defaults."""
    if step == SUBJECT and args.set_scope == "class":
        return {k: v for k, v in overrides.items() if k == "keep_forgotten"}
    return overrides


def cli_steps(args: argparse.Namespace, work: Path, dataset_dir: Path, overrides: dict):
    """Yield (model folder, step record) for each deletion through ``erase``."""
    yield Path(args.base), {}
    parent = Path(args.base)
    done: list[str] = []
    for step in args.sequence:
        done.append(str(step))
        child = step_folder(work, args.variant, done)
        t0 = time.perf_counter()
        options = step_overrides(args, overrides, step)
        result, record = erase(parent, dataset_dir, targets_of(step), "erasediff", child, options, progress=False)
        if args.variant == "none":
            strip_deletions(child)
        target = record["config"].get("resolved_target", {})
        yield (
            child,
            {
                "seconds": round(time.perf_counter() - t0, 1),
                "unlearning_seconds": round(result.seconds, 1),
                "steps": result.steps,
                "mapping": target.get("mapping"),
                "kept_mapping": target.get("kept_mapping"),
                "prior_deletions": record.get("prior_deletions"),
            },
        )
        parent = child


def pipeline_steps(args: argparse.Namespace, work: Path, overrides: dict):
    """Yield (model folder, step record) for each deletion through the compliance pipeline."""
    from pipelines.cli import run_pending
    from pipelines.run import ensure_base_registered, ensure_workspace
    from unlearn_lib.requests import parse_request
    from unlearn_lib.requests.intake import submit as submit_request
    from unlearn_lib.settings import Settings
    from unlearn_lib.state import StateStore
    from unlearn_lib.tracking import configure
    from unlearn_lib.tracking.registry import download_version, production_version

    settings = Settings.load(None, env={}, workspace=str(work / "workspace"))
    t0 = time.perf_counter()
    ws = ensure_workspace(settings, dvc_cache=work / "dvc-cache")
    version = ensure_base_registered(settings, ws)
    client = configure(settings)
    models = work / "versions"
    base_dir = download_version(client, settings.model_name, version, models / f"v{version}")
    yield base_dir, {"seconds": round(time.perf_counter() - t0, 1), "version": version}
    store = StateStore.open(settings)
    for i, step in enumerate(args.sequence, 1):
        t = targets_of(step)
        raw = {
            "request_id": f"REQ-S{i:02d}",
            "received_at": f"2026-11-{i:02d}T09:00:00Z",
            "basis": "gdpr-art17" if step == SUBJECT else "safety",
            "targets": {"subject_ids": list(t.subject_ids)} if step == SUBJECT else {"labels": list(t.labels)},
            "model": settings.model_name,
        }
        submit_request(settings, parse_request(raw))
        t0 = time.perf_counter()
        worst = run_pending(settings, "erasediff", step_overrides(args, overrides, step), {})
        seconds = time.perf_counter() - t0
        row = store.get_request(raw["request_id"])
        audits = client.search_runs(
            [client.get_experiment_by_name(settings.mlflow_experiment).experiment_id],
            filter_string=f"tags.`unlearn.step` = 'audit' and tags.`unlearn.request_ids` = '{raw['request_id']}'",
        )
        # The audit's own utility figures and the bar they were held to (the parent's, and the
        # lineage's original while it is kept).
        audit = (
            {
                "verdict": audits[0].data.tags.get("unlearn.audit_verdict"),
                # One audit per unlearning draw (settings.utility_redraws); the newest decided.
                "draws": len(audits),
                "original": audits[0].data.tags.get("unlearn.audit_original"),
                **{
                    k: round(audits[0].data.metrics[f"audit.{k}"], 4)
                    for k in (
                        "forgotten_probability",
                        "forgotten_probability_floor",
                        "fid_ratio",
                        "fid_ratio_to_original",
                        "retained_accuracy_drop",
                        "retain_loss_ratio",
                    )
                    if f"audit.{k}" in audits[0].data.metrics
                },
            }
            if audits
            else None
        )
        now = str(production_version(client, settings.model_name).version)
        moved = now != version
        version = now
        yield (
            download_version(client, settings.model_name, version, models / f"v{version}"),
            {
                "seconds": round(seconds, 1),
                "request_state": row.state if row is not None else None,
                "exit": worst,
                "production_version": version,
                "production_moved": moved,
                "audit": audit,
            },
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", help="a trained digits base model folder (the CLI path)")
    ap.add_argument("--evaluator", required=True, help="a trained evaluator folder (the judge)")
    ap.add_argument("--sequence", nargs="+", default=["3", "5", SUBJECT, "8", "1", "6"])
    ap.add_argument("--path", choices=("cli", "pipeline"), default="cli")
    ap.add_argument("--variant", choices=("full", "exclude-only", "none"), default="full")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--workdir", default=None)
    add_erasediff_variant_flags(ap, example="--set keep_forgotten_target=guided")
    ap.add_argument(
        "--set-scope", choices=("all", "class"), default="all", help="class: --set applies to class deletions only"
    )
    args = ap.parse_args()
    options = erasediff_options(args)
    args.sequence = parse_sequence(args.sequence)
    if args.path == "cli" and not args.base:
        ap.error("--path cli needs --base")
    if args.path == "pipeline" and args.variant != "full":
        ap.error("the pipeline runs with the lineage's exclusions: --variant full only")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-successive-"))
    work.mkdir(parents=True, exist_ok=True)
    dataset_dir = work / "data"
    if not (dataset_dir / "manifest.jsonl").exists():
        build_digits(dataset_dir, DigitsConfig(), overwrite=True)
    classes = [s for s in args.sequence if s != SUBJECT]
    kept = [c for c in range(10) if c not in classes]
    judge = Judge(Evaluator.load(args.evaluator), dataset_dir, args.per_class, kept)
    overrides = {**options, **({"keep_forgotten": False} if args.variant == "exclude-only" else {})}

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    stem = f"successive-{args.variant}" if args.path == "cli" else f"successive-pipeline-{args.variant}"
    stem += f"-{args.tag}" if args.tag else ""
    path = Path(__file__).parent / "results" / f"{stem}-{dev}.json"
    out: dict[str, Any] = {
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "path": args.path,
        "variant": args.variant,
        "algorithm": "erasediff",
        "options": overrides,
        "options_scope": args.set_scope,
        "scope_defaults": SCOPE_DEFAULTS,  # what the options left as they were (class lam was 1 until 2026-12-04)
        "sequence": args.sequence,
        "kept_classes": kept,
        "per_class": args.per_class,
        "steps": [],
    }
    steps = (
        cli_steps(args, work, dataset_dir, overrides) if args.path == "cli" else pipeline_steps(args, work, overrides)
    )
    erased: list[int] = []
    subject_deleted = False
    for i, (model_dir, info) in enumerate(steps):
        if i == 0:
            out["base"] = {**info, **judge(DiffusionModel.load(model_dir), [], False)}
            b = out["base"]
            print(f"base: kept accuracy {b['kept_accuracy']:.3f}, canaries {b['canaries']}", flush=True)
            continue
        step = args.sequence[i - 1]
        if step == SUBJECT:
            subject_deleted = True
        else:
            erased.append(int(step))
        s = {"erased": step, **info, **judge(DiffusionModel.load(model_dir), erased, subject_deleted)}
        parent = out["steps"][-1] if out["steps"] else out["base"]
        # As the audit's fid_ratio gate (1.5 by default) reads it: against the model it would replace.
        s["kept_fid_ratio_to_parent"] = round(s["kept_fid"] / parent["kept_fid"], 3)
        if s.get("mapping"):
            s["audit_rule"] = audit_rule(parent, s, s["mapping"])
        out["steps"].append(s)
        path.write_text(json.dumps(out, indent=2) + "\n")  # a long run keeps what it measured
        print(
            f"erase {step}: {s['seconds']:.0f}s, P(erased) {s['p_erased']}, kept accuracy {s['kept_accuracy']:.3f} "
            f"(base {out['base']['kept_accuracy']:.3f}), kept FID {s['kept_fid']:.2f} "
            f"({s['kept_fid_ratio_to_parent']:.2f}x the parent's), canaries {s.get('canaries')}, "
            f"floor {s.get('audit_rule')}, "
            f"{ {k: s[k] for k in ('mapping', 'request_state', 'production_moved') if k in s} }",
            flush=True,
        )
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
