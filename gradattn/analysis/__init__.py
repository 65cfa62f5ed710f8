"""The evaluate and gradients stages' library: test-set metrics (`metrics`, `evaluation`)
and per-layer gradient analysis (`gradients`). From gradattn.training it imports only what
the train stage hands over: the trained model's file and the layers its probe watches."""
