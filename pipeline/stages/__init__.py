"""The five stages, each a `run(cfg, ...)` function the CLI calls: prepare, train, predict, ensemble, submit."""
