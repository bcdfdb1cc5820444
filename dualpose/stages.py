"""The small data stages between preparation and training: clip index and masked inputs.

Each reads what the stage before it wrote (see :mod:`dualpose.layout`) and returns a summary
(counts) that the CLI prints and Dagster attaches as metadata.
"""

from __future__ import annotations

from dualpose.config import Params
from dualpose.data.clips import ClipIndex, build_clip_index
from dualpose.data.schema import read_keypoint_table
from dualpose.errors import DataFormatError
from dualpose.layout import Layout


def build_clips(params: Params, layout: Layout, dataset: str) -> dict[str, int]:
    files = layout.table_files(dataset)
    arrays = read_keypoint_table(files)
    index = build_clip_index(arrays, params.clips, table_id=files)
    if len(index) == 0:
        raise DataFormatError(layout.tables(dataset), "clips.min_length / clips.length",
                              f"videos of at least min_length={params.clips.min_length} frames to cut into clips of "
                              f"T={params.clips.length}", f"0 clips from {arrays.num_frames} frames")
    index.save(layout.clips(dataset))
    return {**index.counts(), "clips": len(index), "frames": arrays.num_frames, "T": index.T}


def build_masks(params: Params, layout: Layout, dataset: str) -> dict[str, float]:
    from dualpose.data.masking import build_masked_table, write_masked_table
    from dualpose.skeleton import get_skeleton

    index = ClipIndex.load(layout.clips(dataset))
    splits = ["train"] + (["test"] if params.pretrain.transductive_test_2d else [])
    selected = index.select(splits)
    table = build_masked_table(selected, params.masking, get_skeleton(params.skeleton).num_joints)
    write_masked_table(table, layout.masked(dataset))
    ratio = table.column("masked_ratio").to_numpy()
    return {"rows": table.num_rows, "clips": len(selected), "views": params.masking.views,
            "masked_ratio_mean": round(float(ratio.mean()), 4) if len(ratio) else 0.0}
