"""The trainer on ComfyUI: trainable adapters, the training loop, validation restores."""
