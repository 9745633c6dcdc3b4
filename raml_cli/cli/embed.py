"""``raml embed``: encode a dataset split or a set of images with a model, into an HDF5 file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raml_cli.cli.options import (
    BatchSizeOpt,
    CompileOpt,
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    ResumeOpt,
    RootOpt,
    parse_float_list,
)

EXAMPLES = """
Examples:

    raml embed teacher.safetensors --dataset cub200 --split test --res 448 -o db.h5

    raml embed student.safetensors --dataset cub200 --split test --res 112 -o queries.h5

    raml embed student.safetensors --images photos/ -o photos.h5 --skip-bad

    raml embed teacher.safetensors --dataset cub200 --res 448 --scales 1,0.7071,0.5 -o db.h5

    torchrun --nproc_per_node 4 -m raml_cli embed teacher.safetensors --dataset sop -o db.h5
"""


def command(
    model: Annotated[Path, typer.Argument(help="A model file written by `raml train-teacher` "
                                          "or `raml distill` (.safetensors).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The embeddings file to write "
                                         "(.h5); written atomically.")],
    res: Annotated[int | None, typer.Option(
        "--res", min=8, help="Resolution in pixels (shorter side resized to res*8/7, centre "
        "crop res). Default: the model's training resolution.")] = None,
    scales: Annotated[str, typer.Option(
        "--scales", help="Multi-scale extraction: comma-separated scales of --res, e.g. "
        "1,0.7071,0.5; each image is embedded at each (the evaluation crop resized) and the "
        "vectors averaged, then L2-normalised. 1: single scale.")] = "1",
    scale_power: Annotated[float, typer.Option(
        "--scale-power", help="Average the multi-scale vectors as (mean of v^p)^(1/p), "
        "signed powers (1: the plain mean).")] = 1.0,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(
        "--split", help="With --dataset: train, val, test, or fit (train minus val).")
    ] = "test",
    images: Annotated[Path | None, typer.Option(
        "--images", help="Instead of --dataset: a folder of images (recursive; the first "
        "sub-folder is the class) or a text file with one image path per line.")] = None,
    root: RootOpt = Path("data"),
    batch_size: BatchSizeOpt = 32,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="DataLoader processes that decode images. Default: 0 on a "
        "CPU with 2 or fewer cores, more on bigger machines and GPUs.")] = None,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Leave out unreadable images (recorded in the file's /skipped) "
        "instead of stopping at the first one.")] = False,
    chunk_rows: Annotated[int, typer.Option(
        "--chunk-rows", min=1, max=1048576, help="Rows written per step; --resume restarts "
        "from the last complete step.")] = 1024,
    compile: CompileOpt = False,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Encode images with a model into an embeddings file (HDF5, one unit row per image).

    The database side is usually the teacher at a large resolution, the query side the
    student at a small one; `raml evaluate queries.h5 db.h5` then measures retrieval.
    Under `torchrun --nproc_per_node N` the images are split across N processes and one
    file is still written, in input order.
    """
    from raml_cli.embed import collect_images, embed_dataset
    from raml_cli.errors import InputError
    from raml_cli.model.files import read_model_info
    from raml_cli.progress import Reporter

    scale_list = parse_float_list(scales, "--scales", "1,0.7071,0.5")
    if (dataset is None) == (images is None):
        raise InputError("Give exactly one input: --dataset NAME|PATH (with --split) or "
                         "--images DIR|LIST.txt.")
    # Check the model file (its header only) before scanning a possibly large image tree.
    read_model_info(model)
    reporter = Reporter(quiet=quiet)
    if dataset is not None:
        from raml_cli.data.catalog import load_dataset

        splits = load_dataset(dataset, root)
        samples, image_root = splits.split(split), splits.root
        dataset_name, split_name = splits.name, split
    else:
        image_root, samples = collect_images(images, reporter)
        dataset_name, split_name = str(images), "images"
    listed = {"the image list (--images)": images} if images is not None and images.is_file() \
        else {"the dataset (--dataset)": dataset} if dataset and Path(dataset).is_file() else {}
    result = embed_dataset(
        model, output, samples, image_root, dataset=dataset_name, split=split_name, res=res,
        batch_size=batch_size, workers=workers, device=device, resume=resume,
        skip_bad=skip_bad, chunk_rows=chunk_rows, reporter=reporter, inputs=listed,
        scales=scale_list, scale_power=scale_power, compile=compile)
    if result.rank != 0:  # under torchrun only the writing process reports
        return
    if result.space is not None and result.space.collapsed:
        from raml_cli.evaluate.space import collapse_warning

        reporter.warn(collapse_warning(f"the space of {result.output}", result.space))
    if json_output:
        from raml_cli.cli.render import print_json

        print_json(result.as_dict())
        return
    skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
    scales_shown = "" if result.scales == [1.0] else \
        f" (scales {', '.join(f'{v:g}' for v in result.scales)})"
    resumed = f", resumed after {result.resumed_from}" if result.resumed_from else ""
    reporter.log(
        f"wrote {result.output}: {result.num_rows} x {result.dim} embeddings at "
        f"{result.resolution} px{scales_shown}{skipped}{resumed} "
        f"({result.images_per_second:.1f} img/s on {result.device})")
    if result.space is not None:
        reporter.log(f"spread of {result.output}: mean pairwise cosine "
                     f"{result.space.mean_cosine:.4f}, nearest-neighbour cosine "
                     f"{result.space.nn_cosine:.4f} ({result.space.rows_sampled} sampled rows; "
                     "above 0.9 mean = collapsed)")

