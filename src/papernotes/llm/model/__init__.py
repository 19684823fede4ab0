"""The Llama model: architecture, config, tokenizer, and reading/writing checkpoints."""
