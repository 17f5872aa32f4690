"""`datasets`: the evaluation sets on this machine (bundled and saved), importing a zip or folder of your
own recordings as a named set, and removing one. Every command's `--dataset NAME` accepts these names."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> None:
    from core.data import (  # lazy: --help
        delete_dataset,
        import_dataset_zip,
        known_datasets,
        link_dataset,
        user_datasets_dir,
    )

    if args.action == "import":
        source = Path(args.source)
        if source.suffix.lower() == ".zip" and source.is_file():
            dataset = import_dataset_zip(args.name, source.read_bytes(), replace=args.replace)
        else:  # a folder or manifest: listed where it lies, not copied
            dataset = link_dataset(args.name, source, replace=args.replace)
        print(f"saved {len(dataset)} clips as {dataset.name!r} in {user_datasets_dir() / dataset.name}")
        print(f"use it: python -m core evaluate --dataset {dataset.name}")
    elif args.action == "delete":
        delete_dataset(args.name)
        print(f"deleted {args.name!r}")
    else:
        for info in known_datasets():
            print(f"{info.name:24s} {info.description}")


def add_command(commands) -> None:
    p = commands.add_parser(
        "datasets",
        help="list the evaluation sets, import recordings as a named set, or delete one",
        description=__doc__,
    )
    actions = p.add_subparsers(dest="action")
    actions.add_parser("list", help="the bundled sets and yours (the default)")
    add = actions.add_parser(
        "import",
        help="a .zip (unpacked into the data folder) or a folder / manifest CSV on this machine (listed "
        "where it lies, not copied): a manifest.csv (path,text), a LibriSpeech folder, or audio files with "
        "same-named .txt transcripts",
    )
    add.add_argument("source", help="the .zip file, folder or manifest CSV")
    add.add_argument("--name", required=True, help="the set's name for --dataset (letters, digits, _.-)")
    add.add_argument("--replace", action="store_true", help="replace a saved set of the same name")
    remove = actions.add_parser("delete", help="remove a saved set")
    remove.add_argument("name")
    p.set_defaults(run=run)
