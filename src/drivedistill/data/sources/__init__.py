"""Sources: where scenes come from (the default world, Argoverse 2, nuScenes, NAVSIM)."""
