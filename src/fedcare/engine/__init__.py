"""The round engine (hub side) and the task executor (site side), transport-agnostic."""
