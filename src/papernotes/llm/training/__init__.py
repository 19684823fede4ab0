"""Training recipes: pre-training, fine-tuning, SFT and preference optimisation."""
