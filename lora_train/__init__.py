"""In-graph LoRA trainer for restoration: dataset, adapters, objective and loop, validation, loss curve."""
