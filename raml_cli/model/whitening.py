"""Initialising the whitening layer from the PCA whitening of training descriptors.

Image retrieval practice (Radenović et al., "Fine-tuning CNN image retrieval with no
human annotation", TPAMI 2018; Jégou and Chum, ECCV 2012) learns the whitening of
pooled, L2-normalised descriptors: centre them on their mean ``mu``, project on the
leading eigenvectors ``U`` of their covariance and scale every component by
``lambda^-1/2``::

    W = diag(lambda_1..d)^-1/2 U^T        b = -W mu        (then L2 normalisation)

Post-activation CNN features are non-negative, so all descriptors share a large common
component: a *random* linear layer keeps it (every output vector then points into one
narrow cone, mean pairwise cosine ~0.8 for ImageNet features), and the triplet loss,
whose hard negatives all lie in that cone, pulls the space further together. Centring
removes the common component; the scaling gives every direction the same variance.

Where the sample holds fewer descriptors than channels, or the covariance is nearly
singular, the trailing eigenvalues are ~0 and their ``lambda^-1/2`` would amplify noise;
every eigenvalue is therefore raised by ``shrinkage`` times the mean eigenvalue (a ridge).
Components beyond the descriptor size (``d > C``) get zero rows: they start silent and
learn from there.

>>> descriptors = torch.nn.functional.normalize(torch.rand(200, 32), dim=1)
>>> weight, bias = pca_whitening(descriptors, 16)
>>> weight.shape, bias.shape
(torch.Size([16, 32]), torch.Size([16]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from raml_cli.errors import DataError, InputError

WHITENING_INITS = ("pca", "random")

#: Ridge added to every eigenvalue, as a fraction of their mean.
DEFAULT_SHRINKAGE = 0.1

#: Training images whose descriptors learn the PCA whitening.
PCA_IMAGES = 1000


def check_whitening_init(name: str) -> str:
    """Return ``name`` lower-cased, or raise :class:`InputError` naming the choices."""
    value = str(name).strip().lower()
    if value not in WHITENING_INITS:
        raise InputError(f"Unknown --whitening-init {name!r}. Choose one of: "
                         f"{', '.join(WHITENING_INITS)} (pca: learned from training images, "
                         "the default; random: the layer's random initialisation).")
    return value


def pca_whitening(descriptors: torch.Tensor, dim: int,
                  shrinkage: float = DEFAULT_SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred PCA whitening of ``descriptors`` as a linear layer's weight and bias.

    Args:
        descriptors: ``[N, C]`` rows (pooled, L2-normalised), ``N >= 2``.
        dim: ``d``, the output size.
        shrinkage: ridge on the eigenvalues, as a fraction of their mean (see the module
            docstring); 0 gives the plain whitening.

    Returns:
        ``weight [d, C]`` and ``bias [d]`` (float32) such that ``weight @ x + bias`` is
        the whitened, centred descriptor, components ordered by decreasing variance.

    Raises:
        DataError: fewer than 2 descriptors, or non-finite ones.
    """
    x = descriptors.detach().double().cpu()
    if x.ndim != 2 or x.shape[0] < 2:
        raise DataError(f"PCA whitening needs at least 2 descriptors, got {tuple(x.shape)}. "
                        "Use more training images or --whitening-init random.")
    if not torch.isfinite(x).all():
        raise DataError("The backbone gave non-finite descriptors while learning the PCA "
                        "whitening. Check the initial weights, or use --whitening-init random.")
    channels = x.shape[1]
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / (x.shape[0] - 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues = eigenvalues[order].clamp(min=0.0)
    eigenvectors = eigenvectors[:, order]
    ridge = shrinkage * float(eigenvalues.mean()) + 1e-12
    kept = min(dim, channels)
    scale = (eigenvalues[:kept] + ridge).rsqrt()
    weight = torch.zeros((dim, channels), dtype=torch.float64)
    weight[:kept] = scale[:, None] * eigenvectors[:, :kept].T
    bias = -(weight @ mean)
    return weight.float(), bias.float()


def pooled_descriptors(network: nn.Module, batches: Iterable[torch.Tensor],
                       to_device: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Pooled, L2-normalised backbone descriptors ``[N, C]`` (CPU float32) of ``batches``.

    ``network`` is an :class:`~raml_cli.model.network.EmbeddingNetwork`; it runs in eval
    mode without gradients (its training mode is restored).
    """
    was_training = network.training
    network.eval()
    rows = []
    try:
        with torch.no_grad():
            for images in batches:
                pooled = network.pooling(network.backbone(to_device(images)))
                rows.append(F.normalize(pooled.float(), dim=-1).cpu())
    finally:
        network.train(was_training)
    return torch.cat(rows) if rows else torch.zeros((0, network.backbone_dim))


def init_whitening_pca(network: nn.Module, descriptors: torch.Tensor,
                       shrinkage: float = DEFAULT_SHRINKAGE) -> None:
    """Set ``network.whitening`` (``Linear(C, d)``) to the PCA whitening of ``descriptors``."""
    layer = network.whitening
    if layer is None:
        return
    weight, bias = pca_whitening(descriptors, layer.out_features, shrinkage)
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight.device))
        layer.bias.copy_(bias.to(layer.bias.device))


__all__ = ["DEFAULT_SHRINKAGE", "PCA_IMAGES", "WHITENING_INITS", "check_whitening_init",
           "init_whitening_pca", "pca_whitening", "pooled_descriptors"]
