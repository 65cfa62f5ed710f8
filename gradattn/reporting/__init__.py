"""Reading finished runs back and presenting them: results (experiments, the paper's tables,
publish, the report stage's results.md and summary.json) and figures and pages (plots,
compare, pages). Imports nothing from gradattn.studies, which runs the experiments."""
