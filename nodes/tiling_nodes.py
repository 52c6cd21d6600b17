"""SUPIR Tiled Aggregation: restore images of any size tile by tile, blended at every step."""
from __future__ import annotations

from comfy_api.latest import io

from ..supir.host.auto_tiles import TILES_CHOICES, check_tiles
from ..supir.host.tiled_aggregation import apply_tiled_aggregation
from ..supir.tiling.grid import GRIDS, WEIGHTS, check_tile_pixels


class SUPIRTiledAggregation(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SUPIRTiledAggregation", display_name="SUPIR Tiled Aggregation", category="supir",
            description="Runs every model call tile by tile (SUPIR trunk and UNet on each tile with its slice of "
                        "the hint) and blends the predictions with Gaussian weights, so large images restore "
                        "seamlessly with bounded memory. Works with every sampler; connect after SUPIR Apply Control.",
            inputs=[
                io.Model.Input("model", tooltip="The SUPIR-patched model (after SUPIR Apply Control and guidance)."),
                io.Int.Input("tile_size", default=1024, min=64, max=8192, step=8,
                             tooltip="Tile size in image pixels (1024 = SDXL's native size = 128 latent pixels). "
                                     "A tile larger than the image becomes one tile."),
                io.Int.Input("tile_stride", default=512, min=8, max=8192, step=8,
                             tooltip="Distance between tile starts in image pixels; at most tile_size. "
                                     "Smaller strides overlap more: smoother, slower."),
                io.Combo.Input("grid", options=list(GRIDS), default="snapped",
                               tooltip="snapped: tiles every stride plus a last tile flush with the border "
                                       "(StableSR/SUPIR). even: the fewest tiles spread evenly (TiledDiffusion)."),
                io.Int.Input("tile_batch_size", default=1, min=1, max=64,
                             tooltip="Tiles denoised together in one batch: faster with spare memory."),
                io.Combo.Input("weights", options=list(WEIGHTS), default="official", optional=True,
                               tooltip="Gaussian tile weights. official: centred as in StableSR's and SUPIR's own "
                                       "tiled samplers (half a pixel low down the image), to reproduce them "
                                       "exactly. symmetric: centred on both axes."),
                io.Conditioning.Input("tile_positive", optional=True,
                                      tooltip="Optional per-tile captions: SUPIR Conditioning with caption_per_line, "
                                              "one line per tile, row by row."),
                io.Combo.Input("tiles", options=list(TILES_CHOICES), default="manual", optional=True,
                               tooltip="auto: the largest tile whose predicted memory fits the device's free "
                                       "memory, at most the official tile (SUPIR: the whole image, or 1024 px; "
                                       "StableSR: 512 px), chosen at sampling (stride half the tile, one tile per "
                                       "call; the choice is logged); tile_size, tile_stride and tile_batch_size are "
                                       "then unused. "
                                       "manual: those inputs. With per-tile captions use manual, so the tile "
                                       "count is known."),
            ],
            outputs=[io.Model.Output(tooltip="The model sampling tile by tile, for any sampler.")],
        )

    @classmethod
    def execute(cls, model, tile_size, tile_stride, grid, tile_batch_size, tile_positive=None,
                weights="official", tiles="manual") -> io.NodeOutput:
        check_tiles(tiles)
        if tiles == "auto":
            return io.NodeOutput(apply_tiled_aggregation(model, None, None, grid, 1, tile_positive, weights))
        check_tile_pixels(tile_size, tile_stride)
        return io.NodeOutput(apply_tiled_aggregation(model, tile_size // 8, tile_stride // 8, grid, tile_batch_size,
                                                     tile_positive, weights))


NODES = [SUPIRTiledAggregation]
