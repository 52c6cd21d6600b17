"""StableSR (Wang et al., IJCV 2024) on SD 2.x: the time-aware encoder, the SPADE layers that modulate the UNet's
ResBlocks with its features, its checkpoints and its DDPM respacing. Plain torch."""
