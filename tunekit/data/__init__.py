"""Data: reading sources, formats, label masking, packing, collation and the embedded datasets."""
