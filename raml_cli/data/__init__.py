"""Datasets: the catalogue, downloads, splits, transforms, your own data, the toy set."""
