"""Running the study: its grid of cells, each one DVC experiment (`grid`: `gradattn grid`), and
those cells packed onto one machine's GPUs, optionally under CUDA MPS, then published
(`study`: `gradattn study run`). Execution, not reporting: these modules start `dvc exp run`
processes; gradattn.reporting reads what they made and imports nothing from here."""
