"""Evaluations, kept apart from the unlearning methods they judge."""

from .efficacy import ClassFigures, ClassSamples, class_figures, generate_class_samples
from .evaluator import ConvClassifier, Evaluator, EvaluatorMeta, train_evaluator

__all__ = [
    "ClassFigures",
    "ClassSamples",
    "ConvClassifier",
    "Evaluator",
    "EvaluatorMeta",
    "class_figures",
    "generate_class_samples",
    "train_evaluator",
]
