"""Experience: envpool environments, the replay buffer, offline datasets."""
