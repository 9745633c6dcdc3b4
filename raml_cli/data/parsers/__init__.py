"""Parsers of the on-disk layouts of the catalogue's datasets (annotations only, no pixels).

- :func:`parse_cub`: CUB-200-2011 (and the built-in ``toy`` dataset, written in that layout);
- :func:`parse_cars`: Stanford Cars in its three circulating layouts;
- :func:`parse_sop`: Stanford Online Products (``Ebay_train.txt`` / ``Ebay_test.txt``).

Each takes the dataset folder (or a folder above the release's top folder) and returns a
:class:`ParsedDataset` with the zero-shot ``train`` and ``test`` samples.
"""

from raml_cli.data.parsers.cars import parse_cars
from raml_cli.data.parsers.common import (
    IMAGE_SUFFIXES,
    ParsedDataset,
    check_images_exist,
    missing_images,
)
from raml_cli.data.parsers.cub import parse_cub
from raml_cli.data.parsers.sop import parse_sop

__all__ = ["IMAGE_SUFFIXES", "ParsedDataset", "check_images_exist", "missing_images",
           "parse_cars", "parse_cub", "parse_sop"]
