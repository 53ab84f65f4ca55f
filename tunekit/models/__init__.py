"""Models: loading bases (dtype, quantisation), adapters, and the embedded tiny models."""
