"""SUPIR Restore: diffusion-prior image restoration nodes for ComfyUI (see README.md).

ComfyUI is imported only when ComfyUI asks for the extension, so the pack's modules also import outside it.
"""


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint
    return await entrypoint()
