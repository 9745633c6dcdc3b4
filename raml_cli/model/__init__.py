"""The embedding network (backbone, pooling, whitening), its model files and its cost.

- :mod:`~raml_cli.model.network`: ``NetworkConfig``, ``EmbeddingNetwork``, ``build_network``.
- :mod:`~raml_cli.model.backbone`: timm and torchvision backbones.
- :mod:`~raml_cli.model.pooling`: GeM (one p or one per channel), MAC, SPoC, R-MAC.
- :mod:`~raml_cli.model.weights`: ``--init-weights FILE`` (local state dicts, by name).
- :mod:`~raml_cli.model.files`: ``save_model``, ``load_model``, ``file_sha256``.
- :mod:`~raml_cli.model.cost`: MACs per image and measured latency.
"""
