"""Datasets: the prepared-array format every stage reads (here) and the sources that make it
(`gradattn.data.registry`: name -> download/prepare).

Only the format is imported here, so a stage that reads prepared data does not depend on
(and is not re-run for) the code of every source.
"""

from gradattn.data.prepared import SPLITS, PreparedWriter, load_meta, load_split

__all__ = ["SPLITS", "PreparedWriter", "load_meta", "load_split"]
