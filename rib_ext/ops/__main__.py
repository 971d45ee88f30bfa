"""``python -m rib_ext.ops``: print which backend each operator runs on, as JSON."""
import json

from . import backends

print(json.dumps(backends(), indent=2))
