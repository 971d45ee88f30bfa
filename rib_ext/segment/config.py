"""The segment stage's settings live with every other stage's in :mod:`rib_ext.config`."""
from rib_ext.config import SEGMENT_BACKBONES as BACKBONES  # noqa: F401
from rib_ext.config import SEGMENT_PRESETS as PRESETS  # noqa: F401
from rib_ext.config import SegmentConfig, deeplab_crf  # noqa: F401
