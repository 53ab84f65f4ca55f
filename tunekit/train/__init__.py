"""The one training loop every recipe runs on, with its checkpoints and logs."""
