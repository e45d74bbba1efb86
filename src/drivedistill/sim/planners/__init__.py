"""Reference planners for metric scenes (human log replay, constant velocity, PDM-Closed)."""
