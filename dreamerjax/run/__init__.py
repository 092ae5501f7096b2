"""Running: the config system, devices and sharding, logging, checkpoints, the training modes
and sweeps."""
