"""``raml download``: fetch (or generate, or ingest) a catalogue dataset and verify it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import JsonOpt, QuietOpt, RootOpt, SeedOpt

EXAMPLES = """
Examples:

    raml download toy
    raml download toy --seed 3 --root /tmp/data --json
    raml download cub200
    raml download cars196 --archive car_ims.tgz --archive cars_annos.mat
    raml download sop --archive ~/datasets/Stanford_Online_Products
"""


def command(
    name: Annotated[str, typer.Argument(
        help="The dataset: toy (generated, no network), cub200, cars196 or sop.",
        metavar="NAME", show_default=False)],
    root: RootOpt = Path("data"),
    archive: Annotated[list[Path] | None, typer.Option(
        "--archive", help="A file you already have (the official archive, a .mat file, a "
        "mirror's archive) or an extracted folder (verified where it is, not copied). "
        "Repeat for several files.")] = None,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", help="Skip the md5 check of archives (for a repacked copy); the "
        "layout and image counts are still verified.")] = False,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Download a dataset into ROOT/NAME, verify it, and print its splits.

    Downloads resume where they stopped, fall back to mirrors and are checked
    (size, md5) before they are extracted; a dataset is usable only once its layout and
    image counts are verified. Running it again does nothing for a verified dataset.
    `--seed` applies to the generated toy dataset (a new seed generates it anew);
    an `--archive` folder is verified in place and not copied.
    """
    from raml_cli.cli.render import print_json, print_table
    from raml_cli.data.catalog import dataset_dir
    from raml_cli.data.prepare import prepare_dataset
    from raml_cli.progress import Reporter

    splits = prepare_dataset(name, root, archives=archive or (), verify=not no_verify,
                             seed=seed, reporter=Reporter(quiet=quiet))
    summary = splits.summary()
    folder = dataset_dir(name, root)
    if json_out:
        print_json({"dataset": name, "root": str(folder), "splits": summary})
        return
    rows = [[split, f"{counts['classes']:,}", f"{counts['images']:,}"]
            for split, counts in summary.items()]
    print_table(f"{name} in {folder}", ["split", "classes", "images"], rows,
                caption="val = the second half of the training classes (for validation)")

