"""dreamerjax: JAX/Flax world-model reinforcement learning."""
