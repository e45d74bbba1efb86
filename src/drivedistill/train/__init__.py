"""One training loop for every stage: checkpoints, resume, TensorBoard, DDP via torchrun."""
