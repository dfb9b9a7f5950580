"""Label Studio's language: label configs, regions <-> result JSON, label mapping, images."""

from varco_labeler.labelstudio.config import LabelConfig, LabelConfigError, read_label_config
from varco_labeler.labelstudio.labels import LabelMapper, normalise
from varco_labeler.labelstudio.predictions import (
    Conversion,
    prediction_from_regions,
    prediction_from_varco,
)
from varco_labeler.labelstudio.results import (
    box_from_rectangle,
    rectangle_value,
    regions_to_results,
    results_to_regions,
)

__all__ = [
    "Conversion",
    "LabelConfig",
    "LabelConfigError",
    "LabelMapper",
    "box_from_rectangle",
    "normalise",
    "prediction_from_regions",
    "prediction_from_varco",
    "read_label_config",
    "rectangle_value",
    "regions_to_results",
    "results_to_regions",
]
