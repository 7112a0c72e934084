"""``python -m tf_simclr.data convert|info``: convert an image folder, describe a source."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from tf_simclr.data.converter import convert_image_folder
from tf_simclr.data.sources import DEFAULT_DATASET, load_source


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``convert`` or ``info`` with ``argv``; returns the exit code (2: bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m tf_simclr.data",
        description="Convert an image folder to a TFDS-format directory, or describe a source.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="image folder -> TFDS-format directory")
    c.add_argument("--src", required=True, help="root/<split>/<class>/*.jpg")
    c.add_argument("--dst", required=True, help="output root (gets <name>/<version>/)")
    c.add_argument("--name", default=None, help="dataset name (default: the folder's name)")
    c.add_argument("--version", default="1.0.0")
    c.add_argument("--strict", action="store_true", help="fail on corrupt files")
    i = sub.add_parser("info", help="describe a dataset source")
    i.add_argument("dataset", nargs="?", default=DEFAULT_DATASET)
    i.add_argument("--data_dir", default=None)
    i.add_argument("--split", default="train")
    i.add_argument(
        "--unlabelled",
        action="store_true",
        help="read without labels (an image folder: every image at any depth)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "convert":
            out = convert_image_folder(
                args.src, args.dst, name=args.name, version=args.version, strict=args.strict
            )
            print(out)
        else:
            _, info = load_source(
                args.dataset, data_dir=args.data_dir, split=args.split, unlabelled=args.unlabelled
            )
            print(json.dumps(dataclasses.asdict(info), indent=1))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
