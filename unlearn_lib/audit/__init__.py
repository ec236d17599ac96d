"""Evaluations, kept apart from the unlearning methods they judge.

``run_audit`` is the entry point: efficacy (is the class gone?), memorization (can the
records be extracted, do they still look like members?), utility (does the model still
serve the rest?), gates with thresholds, and the report.
"""

from ..utils import lazy_exports

# Imported on first use (lazy_exports says why).
_EXPORTS = {
    "ClassFigures": "efficacy",
    "ClassSamples": "efficacy",
    "class_figures": "efficacy",
    "generate_class_samples": "efficacy",
    "ConvClassifier": "evaluator",
    "Evaluator": "evaluator",
    "EvaluatorMeta": "evaluator",
    "train_evaluator": "evaluator",
    "AuditParams": "gates",
    "Metric": "gates",
    "audit_schema": "gates",
    "validate_record": "gates",
    "ExtractionResult": "memorization",
    "MembershipResult": "memorization",
    "extraction_test": "memorization",
    "loss_attack": "memorization",
    "neighbourhood_distance": "memorization",
    "AuditResult": "run",
    "run_audit": "run",
    "EvaluatorFeatures": "utility",
    "RealReference": "utility",
    "TorchScriptFeatures": "utility",
    "denoising_loss": "utility",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
