"""The import path `pipeline.augment` from before the split into packages, kept for user code; the
code lives in pipeline/loader/augment.py (`from pipeline.loader import BatchTransform`)."""
from pipeline.loader.augment import BatchTransform, crop_origin, mirror, ten_crop  # noqa: F401
