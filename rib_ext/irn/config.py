"""IRN's settings live with every other stage's in :mod:`rib_ext.config`; re-exported here."""
from rib_ext.config import IRN_PRESETS as PRESETS  # noqa: F401
from rib_ext.config import IRNConfig  # noqa: F401
