"""Parameter-efficient fine-tuning: LoRA and Prefix-Tuning, in peft's directory layout."""
