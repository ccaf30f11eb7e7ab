"""Running campaigns: the plan, executors, jobs, training, distributed helpers, live status."""
