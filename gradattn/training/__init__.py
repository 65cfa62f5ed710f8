"""The train stage's library: the protocol's loop (`loop`), the step engine that runs an
epoch eagerly or as CUDA graphs (`steps`), the optimiser and its learning rate (`optim`), and
a run's configuration and identity (`runs`)."""
