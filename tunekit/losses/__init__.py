"""Pure loss functions: tensors in, ``(loss, metrics)`` out. Nothing here imports accelerate or transformers."""
