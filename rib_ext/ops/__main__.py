"""``python -m rib_ext.ops``: print which backend each operator runs on, as JSON."""
import argparse
import json

from . import backends

argparse.ArgumentParser(
    prog="python -m rib_ext.ops",
    description="Print, as JSON, whether the compiled extension loaded (and why not), what it was "
                "compiled with, and which backend (compiled or the PyTorch reference) each "
                "operator runs on, per device.").parse_args()
print(json.dumps(backends(), indent=2))
