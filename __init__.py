"""SUPIR Restore: diffusion-prior image restoration nodes for ComfyUI (see README.md).

ComfyUI is imported only when ComfyUI asks for the extension, so the pack's modules also import outside it.
"""

WEB_DIRECTORY = "./web"  # the editor extension that keeps workflows saved before a node change loading


async def comfy_entrypoint():
    from .nodes import comfy_entrypoint as entrypoint
    return await entrypoint()
