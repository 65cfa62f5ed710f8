"""GradAttn: attention over a skip-free ResNet-18's depths, as a reproducible DVC pipeline.

"Run" means four things here, each kept in one place: a training run, configured and
identified by gradattn.training.run_config (what each stage ran with is its run record,
gradattn.core.records); a finished run read back for the tables
(gradattn.reporting.experiments.Run); running experiments (gradattn.studies: `dvc exp run`,
`gradattn study run`); and a stage script's guarded main (gradattn.core.stage.stage_entry).
"""

__version__ = "0.1.0"
