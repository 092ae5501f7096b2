"""What acts and learns: the agent (world model + behavior), the actor-critic, the planner,
CMA-ES and the World Models parts."""
