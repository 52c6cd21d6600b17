"""LoRA files: formats, PEFT conversion, inspection and SVD merge."""
