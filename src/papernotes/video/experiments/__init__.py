"""The video field's experiments for ``papernotes reproduce``."""
