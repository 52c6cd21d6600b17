"""The ComfyUI integration: the only modules of supir/ that import ComfyUI."""
