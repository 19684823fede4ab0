"""Shared layer: never imports papernotes.llm or papernotes.video."""
