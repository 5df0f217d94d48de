"""`splatkit merge`: one model from the blocks of a partitioned scene (`splatkit.data.blocks`)."""

from __future__ import annotations

from pathlib import Path

import torch

from splatkit.data.blocks import BlockRegion
from splatkit.io.ply import load_ply
from splatkit.model.gaussians import Gaussians


def merge_blocks(parts: list[tuple[Path, BlockRegion]]) -> tuple[Gaussians, list[int]]:
    """Concatenate, from each (INRIA .ply in the source's original frame, block region) pair, the Gaussians whose
    centres lie in the block's core. The cores tile the ground plane, so a Gaussian trained in the margin of
    one block (where it saw only part of the views) is dropped there and kept by its neighbour. SH degrees are
    padded to the highest. Returns the model and how many Gaussians each part kept."""
    kept, counts = [], []
    for ply, region in parts:
        model = load_ply(ply)
        inside = torch.from_numpy(region.inside(model.means.double().numpy()))
        kept.append(model.subset(inside))
        counts.append(int(inside.sum()))
    degree = max(g.sh_degree for g in kept)
    padded = [g.with_sh_degree(degree) for g in kept]
    merged = Gaussians.from_dict({k: torch.cat([g.as_dict()[k] for g in padded]) for k in padded[0].as_dict()})
    return merged, counts
