"""Simulation for scoring: kinematic bicycle, batch LQR tracker, PDM-Closed reference planner."""
