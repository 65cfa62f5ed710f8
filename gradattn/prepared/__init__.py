"""What the train, evaluate and gradients stages read: the prepared-array format
(`format`), batches on a device (`batches`) and whole-batch augmentation (`augment`).
The sources that write it live in gradattn.sources, so these stages do not depend on
(and are not re-run for) the code of every source."""

from gradattn.prepared.format import SPLITS, PreparedWriter, load_meta, load_split

__all__ = ["SPLITS", "PreparedWriter", "load_meta", "load_split"]
