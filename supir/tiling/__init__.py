"""Tiled processing: tile grids and Gaussian blending, tile batching, the exact tiled VAE's maths."""
