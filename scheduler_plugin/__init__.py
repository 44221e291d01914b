"""topodra scheduler extender: cache, topology index, filter/score, gang planner, HTTP."""
