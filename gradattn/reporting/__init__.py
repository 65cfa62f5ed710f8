"""Reading runs back and presenting them: figures, the paper's tables, experiments and
comparisons, the study grid and the `gradattn` command line."""
