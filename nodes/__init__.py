"""The pack's ComfyUI extension: node registration and the model folders (models/supir, models/stablesr,
models/vlm)."""
from comfy_api.latest import ComfyExtension

from .benchmark_nodes import NODES as BENCHMARK_NODES
from .caption_nodes import NODES as CAPTION_NODES
from .cfw_nodes import NODES as CFW_NODES
from .convert_nodes import NODES as CONVERT_NODES
from .degradation_nodes import NODES as DEGRADATION_NODES
from .folders import register_model_folder
from .image_nodes import NODES as IMAGE_NODES
from .lora_nodes import NODES as LORA_NODES
from .prompt_nodes import NODES as PROMPT_NODES
from .sampling_nodes import NODES as SAMPLING_NODES
from .stablesr_nodes import NODES as STABLESR_NODES
from .supir_nodes import NODES as SUPIR_NODES
from .tiling_nodes import NODES as TILING_NODES
from .training_nodes import NODES as TRAINING_NODES
from .upscale_nodes import NODES as UPSCALE_NODES


class SUPIRRestoreExtension(ComfyExtension):
    async def get_node_list(self):
        return [*SUPIR_NODES, *PROMPT_NODES, *SAMPLING_NODES, *TILING_NODES, *UPSCALE_NODES, *DEGRADATION_NODES,
                *BENCHMARK_NODES, *IMAGE_NODES, *LORA_NODES, *TRAINING_NODES, *CAPTION_NODES, *STABLESR_NODES,
                *CFW_NODES, *CONVERT_NODES]


async def comfy_entrypoint() -> ComfyExtension:
    register_model_folder()
    return SUPIRRestoreExtension()
