"""Simulation: a whole federation on one machine through the same engine as deployment."""
