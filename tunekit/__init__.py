"""tunekit: parameter-efficient fine-tuning and RLHF recipes on one accelerate-based runner."""

__version__ = "0.1.0"
