"""Commands composed of stages: the demo, tuning, distillation, pseudo-labels, the benchmark."""
