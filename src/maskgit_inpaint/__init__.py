"""MaskGIT-style image completion over a VQGAN tokenizer."""
from maskgit_inpaint import environment

environment.apply()  # before any stage, flow or test imports Prefect or MLflow (environment.py)
