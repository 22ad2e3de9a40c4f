"""Models: the VQGAN tokenizer and the bidirectional transformer."""
