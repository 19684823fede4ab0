"""Decoding: plain generation (the baseline) and its lossless accelerations."""
