"""Knowledge distillation: losses, teacher targets and their cache, the training loop."""
