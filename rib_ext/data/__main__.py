"""``python -m rib_ext.data``: dataset utilities.

    python -m rib_ext.data write-labels --root VOC2012 --list ImageSets/Segmentation/train_aug.txt
        writes IRN's cls_labels.npy (image-level labels) from the XML annotations or the masks
    python -m rib_ext.data demo --root DIR
        generates the embedded demo dataset in the VOC layout
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rib_ext.config import ConfigError, DemoDataConfig
from rib_ext.data.demo import generate_demo
from rib_ext.data.errors import DatasetError
from rib_ext.data.voc import read_id_list, write_cls_labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rib_ext.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-labels", help="write IRN's cls_labels.npy from XMLs or masks")
    w.add_argument("--root", required=True, help="the VOC2012 folder")
    w.add_argument("--list", required=True, help="a list file of ids (relative to --root or absolute)")
    w.add_argument("--source", choices=("auto", "xml", "mask"), default="auto",
                   help="auto: XML where it exists, else the segmentation mask")
    w.add_argument("--out", help="output file (default: ROOT/cls_labels.npy)")
    d = sub.add_parser("demo", help="generate the embedded demo dataset")
    d.add_argument("--root", required=True)
    d.add_argument("--seed", type=int, default=DemoDataConfig.seed)
    d.add_argument("--train", type=int, default=DemoDataConfig.num_train)
    d.add_argument("--val", type=int, default=DemoDataConfig.num_val)
    d.add_argument("--size", type=int, default=DemoDataConfig.image_size)
    args = p.parse_args(argv)
    try:
        if args.command == "write-labels":
            root = Path(args.root)
            list_path = Path(args.list) if Path(args.list).is_absolute() else root / args.list
            out = Path(args.out) if args.out else root / "cls_labels.npy"
            table = write_cls_labels(root, read_id_list(list_path), out, args.source)
            print(f"wrote labels of {len(table)} images to {out}")
        else:
            path = generate_demo(args.root, DemoDataConfig(args.seed, args.train, args.val, args.size))
            print(f"demo dataset in {path}")
    except (DatasetError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
