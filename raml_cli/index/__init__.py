"""Search at any size: faiss indexes over embeddings files, and queries against them.

- :mod:`~raml_cli.index.choose`: the index kinds, their memory, the ``auto`` rules.
- :mod:`~raml_cli.index.build`: :func:`build_index` (``raml index``), streaming the rows.
- :mod:`~raml_cli.index.file`: the index file format (one module reads and writes it).
- :mod:`~raml_cli.index.search`: :func:`search_images`, :func:`search_embeddings`
  (``raml search``) and the model/database compatibility check.
- :mod:`~raml_cli.index.sheet`: contact sheets of results.
"""

from raml_cli.index.build import IndexBuildResult, build_index
from raml_cli.index.choose import KINDS, IndexPlan, choose_index, parse_memory
from raml_cli.index.file import IndexInfo, LoadedIndex, read_index_file, read_index_info
from raml_cli.index.search import SearchResult, search_embeddings, search_images

__all__ = [
    "KINDS", "IndexBuildResult", "IndexInfo", "IndexPlan", "LoadedIndex", "SearchResult",
    "build_index", "choose_index", "parse_memory", "read_index_file", "read_index_info",
    "search_embeddings", "search_images",
]
