"""The semantic prior: captions of the LQ image (whole, or per tile of the tiled aggregation) from a local
vision-language model in transformers' format. Plain torch and transformers; never downloads, never runs a
model's own code."""
