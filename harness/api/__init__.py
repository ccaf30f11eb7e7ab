"""What a method package may use from the harness: the adapter base class and the types it receives and
returns, the safe checkpoint helpers, and the readers of the shared on-disk layouts.

`methods/` imports the harness through this module only (an import-linter contract in pyproject.toml
keeps it so); everything else in `harness/` may change without notice to method authors.
"""

from harness.api.adapter import Adapter, TrainData, TrainingSetup, parameter_count
from harness.core.checkpoints import (
    SAFE_GLOBALS,
    CheckpointError,
    add_prefix,
    dataset_of_name,
    load_container,
    load_strict,
    opt_dict,
    require_keys,
    strip_prefix,
)
from harness.core.errors import ItrbenchError
from harness.core.features import PackedFeatures, PaddedFeatures, PaddedTokens, concat_blocks, slice_samples
from harness.data.cusa_json import (
    CLIP_MEAN,
    CLIP_STD,
    CusaDataError,
    CusaSplit,
    PixelImages,
    clip_preprocess,
    find_split_folder,
    load_cusa_split,
    pre_caption,
)
from harness.data.demo import build_demo_images
from harness.data.precomp import DataError, load_precomp

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "SAFE_GLOBALS", "Adapter", "CheckpointError", "CusaDataError", "CusaSplit",
    "DataError", "ItrbenchError", "PackedFeatures", "PaddedFeatures", "PaddedTokens", "PixelImages", "TrainData",
    "TrainingSetup",
    "add_prefix", "build_demo_images", "clip_preprocess", "concat_blocks", "dataset_of_name", "find_split_folder",
    "load_container", "load_cusa_split", "load_precomp", "load_strict", "opt_dict", "parameter_count",
    "pre_caption", "require_keys", "slice_samples", "strip_prefix",
]
