"""marl: multi-agent reinforcement learning on JAX."""
