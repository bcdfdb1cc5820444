"""What one dual-stream block keeps for the backward pass, per variant, plain modules vs the fused
training sub-layers (dualpose.model.lean).

Counts the tensors autograd saves during one block's training forward pass (saved-tensor hooks,
each storage once; the block's input and parameters excluded), at the protocol's training batch
and the variant's design T. Reports MiB per block and C-wide tensors per token; no timing, so the
figures do not depend on the machine's load.

Usage::

    python benchmarks/saved_activations.py --out benchmarks/RESULTS-saved-activations.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import torch

from dualpose.model import build_spec
from dualpose.model.backbone import DualPoseBackbone
from dualpose.model.info import saved_activation_bytes
from dualpose.model.lean import set_lean_activations

REPO = Path(__file__).resolve().parents[1]
TRAIN_BATCH = {"XS": 4, "S": 4, "B": 2, "L": 2}  # as benchmarks/perf_vs_anchor.py


def measure(variant: str) -> dict:
    spec = build_spec(variant)
    torch.manual_seed(0)
    block = DualPoseBackbone(spec).blocks[0].train()
    batch = TRAIN_BATCH[variant]
    x = torch.randn(batch, spec.T, spec.num_joints, spec.dim, requires_grad=True)
    unit = x.numel() * x.element_size()
    row = {"variant": variant, "T": spec.T, "batch": batch, "dim": spec.dim, "depth": spec.depth}
    for label, lean in (("plain", False), ("fused", True)):
        set_lean_activations(lean)
        block.checkpoint = "lean" if lean else False
        nbytes = saved_activation_bytes(block, x)
        row[f"{label}_mib_per_block"] = round(nbytes / 2**20, 1)
        row[f"{label}_c_per_token"] = round(nbytes / unit, 2)
    set_lean_activations(True)
    row["fused_over_plain"] = round(row["fused_mib_per_block"] / row["plain_mib_per_block"], 3)
    row["fused_mib_all_blocks"] = round(row["fused_mib_per_block"] * spec.depth)
    row["plain_mib_all_blocks"] = round(row["plain_mib_per_block"] * spec.depth)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="XS,S,B,L")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS-saved-activations.json")
    args = parser.parse_args()
    rows = [measure(v) for v in args.variants.split(",")]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    record = {"command": "python benchmarks/saved_activations.py --out " + str(args.out.relative_to(REPO)
                                                                          if args.out.is_absolute() and
                                                                          args.out.is_relative_to(REPO)
                                                                          else args.out),
              "code": commit, "torch": torch.__version__, "machine": platform.platform(), "rows": rows}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print("| variant (T, batch) | plain: MiB / block, C / token | fused: MiB / block, C / token | fused / plain | all blocks, MiB (plain -> fused) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} ({r['T']}, {r['batch']}) | {r['plain_mib_per_block']}, {r['plain_c_per_token']} | "
              f"{r['fused_mib_per_block']}, {r['fused_c_per_token']} | {r['fused_over_plain']} | "
              f"{r['plain_mib_all_blocks']:,} -> {r['fused_mib_all_blocks']:,} |")


if __name__ == "__main__":
    main()
