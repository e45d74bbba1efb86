"""Metrics: nuScenes open-loop (ST-P3 / UniAD protocols), NAVSIM PDMS v1.1, closed-loop driving."""
