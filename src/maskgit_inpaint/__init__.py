"""MaskGIT-style image completion over a VQGAN tokenizer."""
