"""Experience: environments (envpool, gymnasium, pure JAX, the memory suite), the replay buffer,
offline datasets."""
