"""The evaluate and gradients stages' library: test-set metrics (`metrics`, `evaluation`)
and per-layer gradient analysis (`gradients`). Imports nothing from gradattn.training."""
