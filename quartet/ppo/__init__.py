"""PPO domain objects shared by the coordinator, the actor and the critic."""
