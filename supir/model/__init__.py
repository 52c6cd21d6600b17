"""The SUPIR model: its layers, control trunk and adaptors, files, and how they map onto an SDXL UNet."""
