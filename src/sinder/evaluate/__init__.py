"""Downstream evaluation on frozen features: k-NN, linear and unsupervised segmentation, LOST,
and intrinsic defect statistics. See :func:`evaluate` and ``sinder evaluate --help``."""

from .run import TASKS, EvaluateConfig, evaluate, evaluate_models, evaluate_with_info, format_table, load_layout, write_metrics

__all__ = [
    "TASKS",
    "EvaluateConfig",
    "evaluate",
    "evaluate_models",
    "evaluate_with_info",
    "format_table",
    "load_layout",
    "write_metrics",
]
