"""Recipes: thin modules that build their pieces from a config and hand a step function to the runner."""
