"""How contextual are the CRL targets? Diagnostics of a pretrained backbone on real clips.

For the teacher targets (the average of the normalised contributions of the last K blocks, as
``pretrain.target`` defines them) this reports:

- ``block_share``: ||h_K - e|| / ||e||, how far the blocks moved the tokens away from their
  embedding ``e`` (0 means every block is still an identity);
- ``linear_r2``: the R^2 of the best linear map from each token's own input (x, y, confidence,
  joint one-hot, frame one-hot) to its target. Near 1, the target is a function of the token alone: predicting
  it for a masked token is masked 2D reconstruction, not contextual representation learning;
- ``position_r2``: the same from the joint and frame one-hots alone: the share of the target a
  masked token's student can predict from its position embedding, with no input at all.

Least squares by SVD (``gelsd``): the one-hots and the constant column are linearly dependent,
which the default QR driver mishandles (it reported R² below the position-only fit's).

Usage (after `benchmarks/crl_study.py`)::

    python benchmarks/crl_diagnostics.py /tmp/dualpose-crl-study/seed0/params.yaml
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from dualpose.config import load_params
from dualpose.layout import Layout
from dualpose.model.weights import load_weights
from dualpose.train.crl import FFNTap, block_targets, normalise_block_output
from dualpose.train.feeds import ClipSet, StageData


def pretrained_and_clips(params_path: str, clips: int):
    """(params, the pretrained backbone in eval mode, ``clips`` seeded training clips (B, T, J, 3))."""
    params = load_params(params_path)
    layout = Layout.from_root(params.storage.root)
    data = StageData.load(params, layout)
    train = ClipSet(data.table, data.index, "train")
    items = np.random.default_rng(0).choice(len(train), size=min(clips, len(train)), replace=False)
    return params, load_weights(layout.model("pretrain")).eval(), train.batch(items)["input"]


def linear_r2(features: torch.Tensor, target: torch.Tensor) -> float:
    """R² of the least-squares linear map from ``features`` (..., F) to ``target`` (..., C)."""
    a = features.reshape(-1, features.shape[-1]).double()
    y = target.reshape(-1, target.shape[-1]).double()
    solution = torch.linalg.lstsq(a, y, driver="gelsd").solution
    return float(1 - ((a @ solution - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())


def batched_targets(top: list[torch.Tensor], norm: str, batch_size: int) -> torch.Tensor:
    """The averaged normalised targets, normalised in chunks of ``batch_size`` clips as pretraining
    sees them (the ``joint`` normalisation centres each joint over a batch)."""
    chunks = [torch.stack([normalise_block_output(h[i:i + batch_size], norm) for h in top]).mean(0)
              for i in range(0, len(top[0]), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def diagnose(params_path: str, clips: int = 256, top_k: int | None = None) -> dict:
    params, backbone, x = pretrained_and_clips(params_path, clips)
    k = top_k or params.pretrain.top_k_blocks
    tap = FFNTap(backbone)
    embedded = backbone.embed(x)
    _, blocks = backbone.forward_features(embedded, return_blocks=True)
    top = block_targets(blocks, k, params.pretrain.target, tap.collect())
    target = batched_targets(top, params.pretrain.target_norm, params.pretrain.batch_size)
    share = float((blocks[-1] - embedded).norm() / embedded.norm())
    b, t, j = x.shape[:3]
    # a token's own input: its 2D and confidence, which joint and which frame it is (the frame
    # table is part of the token, not context)
    joint = torch.eye(j).expand(b, t, j, j)
    frame = torch.eye(t)[None, :, None, :].expand(b, t, j, t)
    ones = torch.ones(b, t, j, 1)
    r2 = linear_r2(torch.cat([x, joint, frame, ones], -1), target)
    position_r2 = linear_r2(torch.cat([joint, frame, ones], -1), target)
    layer_scales = [float(p.abs().mean()) for n, p in backbone.named_parameters() if "ls" in n.split(".")[-1]
                    or "layer_scale" in n or n.endswith(("gamma", "ls1", "ls2"))]
    return {"params": params_path, "clips": int(len(x)), "top_k": k, "target": params.pretrain.target,
            "target_norm": params.pretrain.target_norm, "block_share": share, "linear_r2": r2,
            "position_r2": position_r2,
            "mean_abs_layer_scale": float(np.mean(layer_scales)) if layer_scales else None,
            "layer_scale_init": backbone.spec.layer_scale_init}


@torch.no_grad()
def candidate_targets(params_path: str, clips: int = 256) -> dict[str, float]:
    """Token-local R² of other candidate targets of the same pretrained backbone (top K blocks),
    from forward hooks on each branch's output before layer scale: which parts carry context?"""
    params, backbone, x = pretrained_and_clips(params_path, clips)
    rec: dict[int, dict[str, torch.Tensor]] = {}
    for i, block in enumerate(backbone.blocks):
        for sub in ("attn_spatial", "attn_temporal", "graph_spatial", "graph_temporal"):
            for part in ("mixer", "mlp"):
                getattr(getattr(block, sub), part).register_forward_hook(
                    lambda m, inp, out, i=i, key=f"{sub}.{part}": rec.setdefault(i, {}).__setitem__(key, out))
        block.fusion.register_forward_hook(lambda m, inp, out, i=i: rec.setdefault(i, {}).__setitem__("w", out))
    _, blocks = backbone.forward_features(backbone.embed(x), return_blocks=True)
    b, t, j = x.shape[:3]
    features = torch.cat([x, torch.eye(j).expand(b, t, j, j), torch.eye(t)[None, :, None, :].expand(b, t, j, t),
                          torch.ones(b, t, j, 1)], -1)

    def r2(fn) -> float:
        k = params.pretrain.top_k_blocks
        top = [fn(i) for i in range(len(blocks) - k, len(blocks))]
        return linear_r2(features, batched_targets(top, params.pretrain.target_norm, params.pretrain.batch_size))

    def fused(i: int, a: str, g: str) -> torch.Tensor:
        w = rec[i]["w"].softmax(-1)
        return rec[i][a] * w[..., :1] + rec[i][g] * w[..., 1:]

    return {
        "block output": r2(lambda i: blocks[i]),
        "fused FFN output (default target)": r2(lambda i: fused(i, "attn_temporal.mlp", "graph_temporal.mlp")),
        "temporal mixers": r2(lambda i: fused(i, "attn_temporal.mixer", "graph_temporal.mixer")),
        "temporal attention": r2(lambda i: rec[i]["attn_temporal.mixer"]),
        "spatial attention": r2(lambda i: rec[i]["attn_spatial.mixer"]),
        "spatial GCN": r2(lambda i: rec[i]["graph_spatial.mixer"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="+")
    ap.add_argument("--clips", type=int, default=256)
    ap.add_argument("--candidates", action="store_true", help="also the token-local R² of other candidate targets")
    args = ap.parse_args()
    for path in args.params:
        print(json.dumps(diagnose(path, args.clips), indent=1))
        if args.candidates:
            print(json.dumps(candidate_targets(path, args.clips), indent=1))


if __name__ == "__main__":
    main()
