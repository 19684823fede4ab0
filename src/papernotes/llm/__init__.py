"""Efficient LLMs: the Llama-3 core and the methods built on it."""
