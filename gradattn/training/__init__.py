"""The train stage's library: the protocol's loop (`loop`), the step engine that runs an
epoch eagerly or as CUDA graphs (`steps`), the optimiser and its learning rate (`optim`), a
training run's configuration and identity (`run_config`), the per-epoch gradient probe
(`probe`) and the trained model's file with predict (`trained`). The last two are read by
gradattn.analysis too: the train stage's output and the layers it probes, one definition."""
