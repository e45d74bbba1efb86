"""Data: the SceneStore (sharded Parquet), torch Dataset/collate, and source adapters."""
