"""diffseg: training-free open-vocabulary semantic segmentation from a frozen Stable Diffusion U-Net.

Public API::

    from diffseg import load_pipeline, Vocabulary, Segmenter
    pipe = load_pipeline("tiny")            # or a folder / s3:// URL of a diffusers SD checkpoint
    seg = Segmenter(pipe, Vocabulary(["cat", "potted plant"]), method=["diffsegmenter", "seediff"])
    by_method = seg.segment(images)         # PIL images or HxWx3 uint8 arrays, any sizes; ONE forward
    by_method["seediff"][0].label_map       # (H, W) ints at the input's size; 0 = background
    results = Segmenter(pipe, ["cat"]).segment_method(images)  # one method: a list, one per image
"""

from diffseg.capture import CapturedMaps, Needs, capture
from diffseg.model import ModelLoadError, Pipeline, load_pipeline, save_pipeline
from diffseg.segmenter import Segmentation, Segmenter, SegmenterConfig
from diffseg.vocabulary import Vocabulary

__all__ = [
    "CapturedMaps",
    "ModelLoadError",
    "Needs",
    "Pipeline",
    "Segmentation",
    "Segmenter",
    "SegmenterConfig",
    "Vocabulary",
    "capture",
    "load_pipeline",
    "save_pipeline",
]
__version__ = "0.1.0"
