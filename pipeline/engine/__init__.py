"""The training engine: one loop over one training state, optimizers, weight averaging, batch sizing, models, and a fold's trained model."""
