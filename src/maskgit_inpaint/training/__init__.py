"""Training loops for the tokenizer and the transformer."""
