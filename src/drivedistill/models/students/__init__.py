"""Students: deployable planners. Each takes `AgentInputBatch` only and returns `PlanOutput`."""
