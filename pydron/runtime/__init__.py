"""The runtime: the scheduler that runs a translated function's dataflow graph on a pool."""
