"""Extraction: encode images with a model, into an embeddings file or an array.

- :func:`embed_dataset`: ``raml embed`` (streaming, resumable, ``--skip-bad``, torchrun).
- :func:`embed_in_memory`: rows of a network in memory, for validation inside training.
- :func:`collect_images`: ``--images DIR`` / ``--images LIST.txt`` to samples.
"""

from raml_cli.embed.engine import (
    DEFAULT_BATCH_SIZE,
    EmbedResult,
    default_workers,
    embed_dataset,
    embed_in_memory,
    resume_position,
)
from raml_cli.embed.inputs import collect_images

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EmbedResult",
    "collect_images",
    "default_workers",
    "embed_dataset",
    "embed_in_memory",
    "resume_position",
]
