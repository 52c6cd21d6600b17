"""In-graph LoRA trainer for restoration (planned; see the issue tracker)."""
