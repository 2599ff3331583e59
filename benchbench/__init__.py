"""benchbench: a plugin-based benchmark for OOD detection and likelihood evaluation."""
from benchbench.api import (
    KEY_COLUMNS,
    DataFileError,
    DataUnavailable,
    RESULT_COLUMNS,
    Dataset,
    Detector,
    Model,
    Split,
    Study,
    TrainContext,
    bits_per_dim,
)
from benchbench.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "DataFileError", "DataUnavailable", "Dataset", "Detector", "Model", "Split", "Study", "TrainContext",
    "KEY_COLUMNS", "RESULT_COLUMNS", "bits_per_dim", "hookimpl", "__version__",
]
