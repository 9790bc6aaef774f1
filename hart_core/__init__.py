"""HART: hybrid autoregressive transformer (tokenizer, next-scale transformer, residual diffusion head)."""
