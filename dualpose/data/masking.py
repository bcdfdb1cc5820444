"""Masks of 2D input tokens for CRL pretraining (paper-notes section 3).

A mask is a boolean ``(T, J)`` array per sample, ``True`` = the (frame, joint) token is replaced
by the mask token. Algorithm (p = ``probability``, M = ``span`` clipped to J, per sample):

1. **Count** (data2vec's ``compute_mask_indices`` with ``require_same_masks``, the "batch"
   being the sample's frames). For every frame draw ``n = floor(p * J / M + u)`` spans
   (``u ~ U[0, 1)``, at most ``J - M + 1``) with distinct starts uniform in ``0 .. J - M``, and
   take the size of their union. The sample's count ``K`` is the minimum over its T frames.
2. **Place** (instead of data2vec's random dropping, which breaks spans). In every frame put
   ``ceil(K / M)`` non-overlapping blocks of consecutive joint indices, all of length M except one
   (a uniformly chosen one) of length ``K - (ceil(K / M) - 1) * M``, uniformly over all such
   arrangements (stars and bars: choose the blocks' places among ``J - K + ceil(K / M)`` items).
   Every frame therefore has exactly K masked joints, in at most ``ceil(K / M)`` runs.
3. **Frames** (optional tube masking): ``round(frame_ratio * T)`` frames chosen uniformly are
   masked whole.

Effective ratio ``K / J`` with J = 17 (mean over 2,000 samples per cell, standard error below
0.005; ``python -m dualpose.data.masking`` prints it)::

    T     p    M=1  M=2  M=3  M=4  M=5
    27    0.6  0.59  0.42  0.34  0.30  0.35
    27    0.7  0.65  0.48  0.41  0.37  0.36
    27    0.8  0.76  0.53  0.45  0.40  0.37
    81    0.7  0.65  0.45  0.37  0.34  0.35
    243   0.6  0.59  0.39  0.30  0.29  0.35
    243   0.7  0.65  0.43  0.34  0.32  0.35
    243   0.8  0.76  0.47  0.38  0.35  0.35

So 30-53 % for M 2-5, falling slowly with T (the minimum over more frames). With M = 1 spans
never overlap and the ratio is about p. With M = 5 the count saturates at its floor: two spans of
five with adjacent starts cover 6 joints.

Every sample's random numbers come from its own ``np.random.Generator`` seeded with
``(masking seed, clip id, view)``, so a mask does not depend on batch order or workers; all
logic after the draw is vectorised over samples and frames.

The materialised table has one row per (clip, view): ``clip_id``, ``view``, ``mask`` (the
``T * J`` bits packed with ``np.packbits``, ``fixed_size_binary``) and ``masked_ratio``; its
metadata records T, J, the masking settings and the clip index's fingerprint. It holds the masks of
the first pretraining epoch and is the record of the plan for the later ones: epoch ``e`` uses
generator streams ``e * views .. e * views + views - 1`` (:meth:`MaskedInputs.for_epoch`), so no
clip sees the same mask twice in a run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dualpose.config import MaskingConfig
from dualpose.data.clips import ClipIndex
from dualpose.errors import DataFormatError
from dualpose.io.atomic import atomic_path

ALGORITHM = "span-count-min-over-frames/contiguous-blocks/v1"
FORMAT_VERSION = 1
_META = "dualpose.masks"
_CHUNK_VALUES = 1 << 21  # uniforms drawn per chunk of samples (bounds memory)


def _span(cfg: MaskingConfig, J: int) -> int:
    return max(1, min(cfg.span, J))


def _draw_width(cfg: MaskingConfig, J: int) -> int:
    """Uniforms per frame: count, span starts, block places, short block, frame key."""
    return 3 + (J - _span(cfg, J) + 1) + J


def _seed_words(seed: int, clip_id: int, view: int) -> list[int]:
    return [seed % (1 << 64), int(clip_id), int(view)]


@dataclass
class _Uniforms:
    count: np.ndarray  # (n, T)
    starts: np.ndarray  # (n, T, J - M + 1)
    place: np.ndarray  # (n, T, J)
    misc: np.ndarray  # (n, T, 2): short block, frame key


def _draw(clip_ids: np.ndarray, views: np.ndarray, T: int, J: int, cfg: MaskingConfig) -> _Uniforms:
    """Uniforms of every sample from its own generator (reproducible in any order or worker).

    The draw order per sample is fixed: count (T), starts (T, J-M+1), places (T, J), misc (T, 2).
    """
    n, P = clip_ids.size, J - _span(cfg, J) + 1
    u = _Uniforms(np.empty((n, T)), np.empty((n, T, P)), np.empty((n, T, J)), np.empty((n, T, 2)))
    for i, (c, v) in enumerate(zip(clip_ids.tolist(), views.tolist())):
        rng = np.random.default_rng(_seed_words(cfg.seed, c, v))
        rng.random(out=u.count[i])
        rng.random(out=u.starts[i])
        rng.random(out=u.place[i])
        rng.random(out=u.misc[i])
    return u


def _smallest_k(keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Boolean mask of the k smallest entries along the last axis (k broadcast over the rest).

    Keys are float64 uniforms: ties (which would select more) have probability ~1e-14 per row.
    """
    ordered = np.sort(keys, axis=-1)
    thr = np.take_along_axis(ordered, np.maximum(k - 1, 0)[..., None], axis=-1)
    return (keys <= thr) & (k > 0)[..., None]


def _masks_from_uniforms(u: _Uniforms, J: int, cfg: MaskingConfig) -> np.ndarray:
    n, T = u.count.shape
    M = _span(cfg, J)
    P = J - M + 1

    # 1. count: union size of the span process per frame, minimum over frames
    n_spans = np.minimum(np.floor(cfg.probability * J / M + u.count).astype(np.int64), P)
    starts = _smallest_k(u.starts, n_spans).view(np.int8)  # (n, T, P)
    c = np.cumsum(np.pad(starts, ((0, 0), (0, 0), (M, M - 1))), axis=-1, dtype=np.int16)
    covered = (c[..., M:] - c[..., :-M]) > 0  # joint j covered by a start in [j-M+1, j]
    K = covered.sum(axis=-1).min(axis=-1) if T else np.zeros(n, np.int64)  # (n,)

    # 2. place r = ceil(K/M) blocks per frame: choose the blocks' items among J - K + r items
    r = -(-K // M)
    items = J - K + r
    keys = np.where(np.arange(J) < items[:, None, None], u.place, np.inf)
    is_block = _smallest_k(keys, np.broadcast_to(r[:, None], (n, T)))
    a, t, q = np.nonzero(is_block)  # sorted by (sample, frame, item)
    per_frame = np.repeat(r, T)
    if a.size == per_frame.sum():  # block number within its frame, from the sorted order
        b = np.arange(a.size) - np.repeat(np.cumsum(per_frame) - per_frame, per_frame)
    else:  # pragma: no cover - only after a tie among float64 keys
        b = np.cumsum(is_block, axis=-1)[a, t, q] - 1
    short_len = (K - (r - 1) * M)[a]
    short_idx = np.minimum((u.misc[a, t, 0] * r[a]).astype(np.int64), r[a] - 1)
    start = q + b * (M - 1) - np.where(short_idx < b, M - short_len, 0)
    end = start + np.where(b == short_idx, short_len, M)
    bounds = np.zeros((n, T, J + 1), np.int8)
    bounds[a, t, start] += 1
    bounds[a, t, end] -= 1  # starts are distinct and ends are distinct: each update is exact
    mask = np.cumsum(bounds, axis=-1, dtype=np.int8)[..., :J] > 0

    # 3. whole frames
    n_frames = int(round(cfg.frame_ratio * T))
    if n_frames:
        mask |= _smallest_k(u.misc[..., 1], np.full(n, n_frames))[..., None]
    return mask


def generate_masks(num_clips: int, T: int, J: int, cfg: MaskingConfig,
                   clip_ids: np.ndarray, view: int | np.ndarray) -> np.ndarray:
    """(num_clips, T, J) bool masks (True = masked) for these clips and view(s)."""
    clip_ids = np.asarray(clip_ids, dtype=np.int64).reshape(-1)
    views = np.broadcast_to(np.asarray(view, dtype=np.int64), clip_ids.shape)
    if clip_ids.size != num_clips:
        raise ValueError(f"generate_masks: num_clips={num_clips} but {clip_ids.size} clip ids")
    if (clip_ids < 0).any() or (views < 0).any():
        raise ValueError("generate_masks: clip ids and views must be non-negative")
    width = _draw_width(cfg, J)
    out = np.empty((num_clips, T, J), bool)
    chunk = max(1, _CHUNK_VALUES // max(1, T * width))
    for lo in range(0, num_clips, chunk):
        sl = slice(lo, lo + chunk)
        u = _draw(clip_ids[sl], views[sl], T, J, cfg)
        out[sl] = _masks_from_uniforms(u, J, cfg)
    return out


def mask_bytes(T: int, J: int) -> int:
    return (T * J + 7) // 8


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(n, T, J) bool -> (n, ceil(T*J/8)) uint8."""
    n = masks.shape[0]
    return np.packbits(masks.reshape(n, -1), axis=1)


def unpack_masks(packed: np.ndarray, T: int, J: int) -> np.ndarray:
    """(n, ceil(T*J/8)) uint8 -> (n, T, J) bool."""
    n = packed.shape[0]
    return np.unpackbits(packed, axis=1, count=T * J).view(bool).reshape(n, T, J)


def build_masked_table(index: ClipIndex, cfg: MaskingConfig, num_joints: int) -> pa.Table:
    """One row per (clip, view) of ``index`` (clip-major), views ``0 .. cfg.views - 1``."""
    T, J, V = index.T, num_joints, cfg.views
    clip_ids = np.repeat(index.clip_id, V)
    views = np.tile(np.arange(V, dtype=np.int64), len(index))
    nb = mask_bytes(T, J)
    packed = np.empty((clip_ids.size, nb), np.uint8)
    ratio = np.empty(clip_ids.size, np.float32)
    chunk = max(1, _CHUNK_VALUES // max(1, T * _draw_width(cfg, J)))
    for lo in range(0, clip_ids.size, chunk):
        sl = slice(lo, lo + chunk)
        m = generate_masks(clip_ids[sl].size, T, J, cfg, clip_ids[sl], views[sl])
        packed[sl] = pack_masks(m)
        ratio[sl] = m.mean(axis=(1, 2))
    mask_col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nb), clip_ids.size,
                                                    [None, pa.py_buffer(packed.tobytes())])
    meta = {
        "version": FORMAT_VERSION,
        "algorithm": ALGORITHM,
        "T": T,
        "J": J,
        "config": cfg.model_dump(),
        "clip_index": index.fingerprint,
        "num_clips": len(index),
    }
    return pa.table(
        {
            "clip_id": pa.array(clip_ids),
            "view": pa.array(views.astype(np.int16)),
            "mask": mask_col,
            "masked_ratio": pa.array(ratio),
        }
    ).replace_schema_metadata({_META.encode(): json.dumps(meta).encode()})


def write_masked_table(table: pa.Table, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


@dataclass(eq=False)
class MaskedInputs:
    """Masks of a materialised table, kept packed; unpacked on demand."""

    clip_id: np.ndarray  # (n,) int64
    view: np.ndarray  # (n,) int64
    packed: np.ndarray  # (n, ceil(T*J/8)) uint8
    masked_ratio: np.ndarray  # (n,) float32
    T: int
    J: int
    cfg: MaskingConfig
    clip_index_fingerprint: str = ""
    _lookup: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.clip_id.shape[0])

    def masks(self, rows: int | slice | np.ndarray | None = None) -> np.ndarray:
        """(n, T, J) bool masks of these table rows."""
        packed = self.packed if rows is None else self.packed[rows]
        return unpack_masks(packed.reshape(-1, self.packed.shape[1]), self.T, self.J)

    def rows_for(self, clip_ids: np.ndarray, view: int | np.ndarray) -> np.ndarray:
        """Table rows of (clip id, view) pairs; KeyError naming the first pair missing."""
        clip_ids = np.asarray(clip_ids, dtype=np.int64).reshape(-1)
        views = np.broadcast_to(np.asarray(view, dtype=np.int64), clip_ids.shape)
        radix = int(self.view.max()) + 1 if len(self) else 1
        if self._lookup is None:
            order = np.lexsort((self.view, self.clip_id))
            self._lookup = (order, self.clip_id[order] * radix + self.view[order])
        order, keys = self._lookup
        wanted = clip_ids * radix + views
        pos = np.searchsorted(keys, wanted)
        found = (pos < keys.size) & (views < radix) & (views >= 0)
        found[found] = keys[pos[found]] == wanted[found]
        if not found.all():
            i = int(np.argmin(found))
            raise KeyError(f"masked inputs have no mask for clip {clip_ids[i]} view {views[i]}")
        return order[pos]

    def for_clips(self, clip_ids: np.ndarray, view: int | np.ndarray) -> np.ndarray:
        """(n, T, J) bool masks of these clips in these view(s)."""
        return self.masks(self.rows_for(clip_ids, view))

    def for_epoch(self, clip_ids: np.ndarray, view: int | np.ndarray, epoch: int) -> np.ndarray:
        """(n, T, J) masks of these clips in view(s) ``0 .. views - 1`` of training epoch ``epoch``.

        The table is the versioned source of the mask plan: epoch 0 reads its materialised masks;
        epoch ``e`` draws generator stream ``e * views + view`` of the same recorded settings
        (seed, algorithm), so within a run no clip sees the same mask twice and a rerun sees the
        very same masks.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch == 0:
            return self.for_clips(clip_ids, view)
        clip_ids = np.asarray(clip_ids, dtype=np.int64).reshape(-1)
        views = np.broadcast_to(np.asarray(view, dtype=np.int64), clip_ids.shape)
        if (views < 0).any() or (views >= self.cfg.views).any():
            raise ValueError(f"views must be in [0, {self.cfg.views}), got {views.min()}..{views.max()}")
        return generate_masks(clip_ids.size, self.T, self.J, self.cfg, clip_ids, epoch * self.cfg.views + views)


def read_masked_table(path: str | os.PathLike, *, T: int | None = None, num_joints: int | None = None,
                      cfg: MaskingConfig | None = None, index: ClipIndex | None = None) -> MaskedInputs:
    """Read masked inputs; T, J, settings and clip index, where given, must match the file's."""
    try:
        t = pq.read_table(str(path))
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataFormatError(path, "<file>", "a readable Parquet masked-input table", str(exc)) from exc
    raw = (t.schema.metadata or {}).get(_META.encode())
    if raw is None:
        raise DataFormatError(path, f"schema metadata {_META}", "a DualPose masked-input table", "no such metadata")
    meta = json.loads(raw)
    rebuild = "; rebuild the masked inputs"
    if meta.get("version") != FORMAT_VERSION:
        raise DataFormatError(path, f"metadata {_META}.version", str(FORMAT_VERSION), str(meta.get("version")))
    if meta.get("algorithm") != ALGORITHM:
        raise DataFormatError(path, f"metadata {_META}.algorithm", ALGORITHM, f"{meta.get('algorithm')}{rebuild}")
    if T is not None and meta["T"] != T:
        raise DataFormatError(path, f"metadata {_META}.T", f"clips of T={T} frames", f"T={meta['T']}{rebuild}")
    if num_joints is not None and meta["J"] != num_joints:
        raise DataFormatError(path, f"metadata {_META}.J", f"{num_joints} joints", f"{meta['J']}{rebuild}")
    stored_cfg = MaskingConfig.model_validate(meta["config"])
    if cfg is not None and cfg != stored_cfg:
        want, got = cfg.model_dump(), stored_cfg.model_dump()
        diff = sorted(k for k in want if want[k] != got.get(k))
        raise DataFormatError(path, f"metadata {_META}.config ({', '.join(diff)})",
                              json.dumps({k: want[k] for k in diff}),
                              json.dumps({k: got[k] for k in diff}) + rebuild)
    if index is not None and meta.get("clip_index") != index.fingerprint:
        raise DataFormatError(path, f"metadata {_META}.clip_index", f"masks of clip index {index.fingerprint}",
                              f"{meta.get('clip_index')}{rebuild}")
    missing = {"clip_id", "view", "mask", "masked_ratio"} - set(t.column_names)
    if missing:
        raise DataFormatError(path, ", ".join(sorted(missing)), "the columns of a masked-input table", "missing")
    nb = mask_bytes(int(meta["T"]), int(meta["J"]))
    col = t.column("mask").combine_chunks()
    if col.type != pa.binary(nb):
        raise DataFormatError(path, "mask", f"fixed_size_binary[{nb}]", str(col.type))
    if col.null_count:
        raise DataFormatError(path, "mask", "no nulls", f"{col.null_count} nulls")
    n = len(col)
    packed = np.frombuffer(col.buffers()[1], np.uint8, count=n * nb, offset=col.offset * nb).reshape(n, nb)
    return MaskedInputs(
        clip_id=t.column("clip_id").to_numpy().astype(np.int64),
        view=t.column("view").to_numpy().astype(np.int64),
        packed=packed,
        masked_ratio=t.column("masked_ratio").to_numpy().astype(np.float32),
        T=int(meta["T"]),
        J=int(meta["J"]),
        cfg=stored_cfg,
        clip_index_fingerprint=str(meta.get("clip_index", "")),
    )


def ratio_table(Ts: tuple[int, ...] = (27, 81, 243), ps: tuple[float, ...] = (0.6, 0.7, 0.8),
                spans: tuple[int, ...] = (1, 2, 3, 4, 5), J: int = 17, samples: int = 2_000) -> str:
    """The effective-ratio table of the module docstring (mean K/J over ``samples`` samples)."""
    lines = ["T     p    " + "  ".join(f"M={m}" for m in spans)]
    for T in Ts:
        for p in ps:
            cells = []
            for m in spans:
                cfg = MaskingConfig(probability=p, span=m)
                k = generate_masks(samples, T, J, cfg, np.arange(samples), 0)[:, 0, :].sum(-1)
                cells.append(f"{k.mean() / J:.2f}")
            lines.append(f"{T:<5d} {p:.1f}  " + "  ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    print(ratio_table())
