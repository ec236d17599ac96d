"""Evaluations, kept apart from the unlearning methods they judge.

``run_audit`` is the entry point: efficacy (is the class gone?), memorization (can the
records be extracted, do they still look like members?), utility (does the model still
serve the rest?), gates with thresholds, and the report.
"""

from .efficacy import ClassFigures, ClassSamples, class_figures, generate_class_samples
from .evaluator import ConvClassifier, Evaluator, EvaluatorMeta, train_evaluator
from .gates import AuditParams, Metric, audit_schema, validate_record
from .memorization import ExtractionResult, MembershipResult, extraction_test, loss_attack, neighbourhood_distance
from .run import AuditResult, run_audit
from .utility import (
    EvaluatorFeatures,
    RealReference,
    TorchScriptFeatures,
    denoising_loss,
)

__all__ = [
    "AuditParams",
    "AuditResult",
    "ClassFigures",
    "ClassSamples",
    "ConvClassifier",
    "Evaluator",
    "EvaluatorFeatures",
    "EvaluatorMeta",
    "ExtractionResult",
    "MembershipResult",
    "Metric",
    "RealReference",
    "TorchScriptFeatures",
    "audit_schema",
    "class_figures",
    "denoising_loss",
    "extraction_test",
    "generate_class_samples",
    "loss_attack",
    "neighbourhood_distance",
    "run_audit",
    "train_evaluator",
    "validate_record",
]
