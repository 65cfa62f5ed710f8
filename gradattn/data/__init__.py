"""Datasets: a registry of sources and the prepared-array format every stage reads."""

from gradattn.data.prepared import SPLITS, PreparedWriter, load_meta, load_split
from gradattn.data.registry import DatasetSpec, get_spec, known_datasets

__all__ = ["SPLITS", "DatasetSpec", "PreparedWriter", "get_spec", "known_datasets", "load_meta",
           "load_split"]
