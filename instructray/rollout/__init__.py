"""Rollout-engine pieces that run inside the engine's own worker processes."""
