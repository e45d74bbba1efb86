"""Teachers: models that may read privileged information or run too slowly to deploy."""
