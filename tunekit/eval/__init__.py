"""Evaluation: generation (greedy, sampled, best-of-n) and the tasks that score it, for ``tunekit.recipes.eval``."""
