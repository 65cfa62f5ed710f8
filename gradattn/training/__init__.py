"""The train stage's library: the protocol's loop (`loop`), the fast GPU path (`fast`) and a
run's configuration and identity (`runs`)."""
