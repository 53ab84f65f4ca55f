"""Reinforcement learning pieces: rollouts and rewards."""
