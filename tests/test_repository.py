"""The repository's own references hold: the public names exist, the README's layout names every
module, no comment points at a file or a tracker that a reader of the repository cannot open."""
import pathlib
import re

import rib_ext

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(rib_ext.__file__).resolve().parent


def test_ops_star_import_gives_every_listed_name():
    namespace = {}
    exec("from rib_ext.ops import *", namespace)
    import rib_ext.ops as ops
    missing = [name for name in ops.__all__ if name not in namespace]
    assert not missing
    assert "oracle" in namespace and "gndrp_pool" in namespace
