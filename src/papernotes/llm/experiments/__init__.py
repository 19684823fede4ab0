"""The LLM field's experiments for ``papernotes reproduce``."""
