"""Two structural CPU levers of issue 11, each timed in one process against the plain model.

- ``fold-inference``: an inference-only re-parameterisation of every block, as deploy-time
  conversions do (RepVGG style): the LayerNorm affines and layer scales folded into the matrix
  product next to them, the first products of both streams (attention q/k/v, the skeleton
  graph's U and V) on the shared input as one product, the temporal graph's U and V as one, and
  the two-way fusion softmax as ``lerp(g, a, sigmoid(l_a - l_g))``. Fewer operators per block,
  the same function.
- ``thread-split``: a training step as two Python threads, each running the forward and backward
  pass of half the batch with one intra-op thread (gradients accumulate into the shared
  parameters), against one pass over the whole batch with two intra-op threads. The samples are
  independent (LayerNorm, no BatchNorm), so the gradients are the same.
- ``thread-split-inference``: the same split for a no-grad forward pass (the video path's
  batches of windows), outputs concatenated.

Both check first that they compute what the plain model computes, then alternate the two steps
(order flipped every round) and report the median per-round speed-up with its quartiles. Neither
lever is in the library: these measure whether it would pay (``RESULTS-perf.md``, "Structural
CPU levers").

Usage::

    OMP_NUM_THREADS=2 python benchmarks/cpu_probes.py fold-inference --variant XS --batch 1 --rounds 60
    LD_PRELOAD=libtcmalloc_minimal.so.4 OMP_NUM_THREADS=2 python benchmarks/cpu_probes.py thread-split --variant S
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_step import REPO, alternate, append_record, paired_speedup, run_context  # noqa: E402

sys.path.insert(0, str(REPO))
from dualpose.model import DualPoseLifter, build_spec  # noqa: E402
from dualpose.model.blocks import DualStreamBlock, MetaFormerBlock  # noqa: E402


def folded_linear(norm: nn.LayerNorm, linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias that map the affine-free normalised input to ``[lin(norm(x)) for lin]``,
    concatenated along the output channels."""
    weights, biases = [], []
    for lin in linears:
        weights.append(lin.weight * norm.weight[None, :])
        bias = lin.weight @ norm.bias
        biases.append(bias if lin.bias is None else bias + lin.bias)
    return torch.cat(weights).contiguous(), torch.cat(biases).contiguous()


class FoldedBlock:
    """Eval-only forward of a :class:`DualStreamBlock` with folded weights (see module doc)."""

    def __init__(self, block: DualStreamBlock) -> None:
        self.block = block
        att_s, att_t, graph_s, graph_t = block.attn_spatial, block.attn_temporal, block.graph_spatial, block.graph_temporal
        self.dim = c = att_s.norm1.weight.shape[0]
        with torch.no_grad():
            w_att, b_att = folded_linear(att_s.norm1, [att_s.mixer.qkv])
            w_graph, b_graph = folded_linear(graph_s.norm1, [graph_s.mixer.V, graph_s.mixer.U])
            self.first = torch.cat((w_att, w_graph)), torch.cat((b_att, b_graph))
            self.qkv_temporal = folded_linear(att_t.norm1, [att_t.mixer.qkv])
            self.uv_temporal = folded_linear(graph_t.norm1, [graph_t.mixer.V, graph_t.mixer.U])
            self.proj = {name: self._scaled(sub.mixer.proj, sub.ls1) for name, sub in
                         (("spatial", att_s), ("temporal", att_t))}
            self.mlp = {id(sub): folded_linear(sub.norm2, [sub.mlp.fc1]) + self._scaled(sub.mlp.fc2, sub.ls2)
                        for sub in (att_s, att_t, graph_s, graph_t)}
            difference = block.fusion.weight[0] - block.fusion.weight[1]
            self.fusion = difference[:c].contiguous(), difference[c:].contiguous(), \
                (block.fusion.bias[0] - block.fusion.bias[1]).reshape(1)

    @staticmethod
    def _scaled(linear: nn.Linear, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (scale[:, None] * linear.weight).contiguous(), scale * linear.bias

    def _mlp(self, sub: MetaFormerBlock, x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = self.mlp[id(sub)]
        hidden = F.gelu(F.linear(F.layer_norm(x, (self.dim,)), w1, b1))
        return F.linear(hidden, w2, b2).add_(x)

    @staticmethod
    def _graph(sub: MetaFormerBlock, normed: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
               x: torch.Tensor) -> torch.Tensor:
        """``x + ls1 * relu(xn + LN(aggregate + U))`` with ``xn = norm1(x)`` from the plain normalisation."""
        xn = torch.addcmul(sub.norm1.bias, normed, sub.norm1.weight)
        update = F.relu(sub.mixer.norm(sub.mixer.aggregate(xn, v).add_(u)).add_(xn))
        return update.mul_(sub.ls1).add_(x)

    def __call__(self, x: torch.Tensor, checkpoint_mode: object = None) -> torch.Tensor:
        block, c = self.block, self.dim
        normed = F.layer_norm(x, (c,))
        first = F.linear(normed, *self.first)
        qkv, v, u = first[..., :3 * c], first[..., 3 * c:4 * c], first[..., 4 * c:]

        a = F.linear(block.attn_spatial.mixer.attend_heads(qkv), *self.proj["spatial"]).add_(x)
        a = self._mlp(block.attn_spatial, a)
        qkv = F.linear(F.layer_norm(a, (c,)), *self.qkv_temporal)
        a = F.linear(block.attn_temporal.mixer.attend_heads(qkv), *self.proj["temporal"]).add_(a)
        a = self._mlp(block.attn_temporal, a)

        g = self._mlp(block.graph_spatial, self._graph(block.graph_spatial, normed, v, u, x))
        normed = F.layer_norm(g, (c,))
        vu = F.linear(normed, *self.uv_temporal)
        g = self._graph(block.graph_temporal, normed, vu[..., :c], vu[..., c:], g)
        g = self._mlp(block.graph_temporal, g)

        tokens = x.numel() // c
        w_a, w_g, bias = self.fusion
        logit = torch.addmv(torch.addmv(bias, a.reshape(tokens, c), w_a), g.reshape(tokens, c), w_g)
        return torch.lerp(g, a, torch.sigmoid(logit).view(*x.shape[:-1], 1))


def folded_model(model: DualPoseLifter) -> DualPoseLifter:
    """An eval-mode copy of ``model`` whose blocks run :class:`FoldedBlock` (inference only)."""
    folded = copy.deepcopy(model).eval()
    for block in folded.backbone.blocks:
        block.forward = FoldedBlock(block)
    return folded


def on_two_threads(fn: Callable[..., torch.Tensor | None], halves: list[tuple]) -> list[torch.Tensor | None]:
    """``fn(*half)`` for each half in its own Python thread, with one intra-op thread each (the
    process's thread count is restored after); a worker's exception is re-raised here."""
    results: list[torch.Tensor | None] = [None] * len(halves)
    errors: list[BaseException] = []

    def run(index: int, half: tuple) -> None:
        try:
            results[index] = fn(*half)
        except BaseException as error:  # re-raised in the caller
            errors.append(error)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        workers = [threading.Thread(target=run, args=(i, half)) for i, half in enumerate(halves)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        torch.set_num_threads(threads_before)
    if errors:
        raise errors[0]
    return results


def split_training_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """Forward and backward of two batch halves in two threads with one intra-op thread each;
    each half's loss is weighted by its share of the batch, so the summed gradients are those of
    the whole batch's mean loss."""
    def half_pass(xs: torch.Tensor, ys: torch.Tensor) -> None:
        (loss_fn(model(xs), ys) * (len(xs) / len(x))).backward()

    half = len(x) // 2
    on_two_threads(half_pass, [(x[:half], y[:half]), (x[half:], y[half:])])


def split_inference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without gradients, the batch's two halves in two threads of one intra-op
    thread each (grad mode is per thread, so each worker turns it off itself)."""
    def half_call(xs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(xs)

    half = len(x) // 2
    return torch.cat(on_two_threads(half_call, [(x[:half],), (x[half:],)]))


def mpjpe(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).norm(dim=-1).mean()


MATRIX_PRODUCTS = {"mm", "addmm", "bmm", "baddbmm", "addmv", "mv", "matmul"}


class OperatorCount(TorchDispatchMode):
    """Counts the ATen operators dispatched inside the ``with`` block (views and copies included)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.matrix_products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.total += 1
        self.matrix_products += func.__name__.split(".")[0] in MATRIX_PRODUCTS
        return func(*args, **(kwargs or {}))


def operators_of(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """ATen operators (all, and matrix products) of one no-grad call of ``model`` on ``x``."""
    count = OperatorCount()
    with torch.no_grad(), count:
        model(x)
    return {"operators": count.total, "matrix_products": count.matrix_products}


def probe_fold(model: DualPoseLifter, x: torch.Tensor) -> tuple[dict, dict[str, Callable[[], None]]]:
    folded = folded_model(model)
    model.eval()
    with torch.no_grad():
        check = {"max_abs_output_diff": (model(x) - folded(x)).abs().max().item(),
                 "plain": operators_of(model, x), "lever": operators_of(folded, x)}

    def step_of(m: nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                m(x)
        return step
    return check, {"plain": step_of(model), "lever": step_of(folded)}


def probe_split(model: DualPoseLifter, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict[str, Callable[[], None]]]:
    model.train()
    mpjpe(model(x), y).backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    split_training_pass(model, x, y, mpjpe)
    check = {"max_rel_grad_diff": max(((p.grad - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
                                      for p, g in zip(model.parameters(), whole))}
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        mpjpe(model(x), y).backward()
        optimizer.step()

    def lever() -> None:
        optimizer.zero_grad(set_to_none=True)
        split_training_pass(model, x, y, mpjpe)
        optimizer.step()
    return check, {"plain": plain, "lever": lever}


def probe_split_inference(model: DualPoseLifter, x: torch.Tensor) -> tuple[dict, dict[str, Callable[[], None]]]:
    model.eval()
    with torch.no_grad():
        check = {"max_abs_output_diff": (model(x) - split_inference(model, x)).abs().max().item()}

    def plain() -> None:
        with torch.no_grad():
            model(x)
    return check, {"plain": plain, "lever": lambda: split_inference(model, x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=["fold-inference", "thread-split", "thread-split-inference"])
    parser.add_argument("--variant", default="XS", choices=["XS", "S", "B", "L"])
    parser.add_argument("--batch", type=int, default=None, help="default: 1 (fold-inference), 4 (thread-split), 8 (thread-split-inference)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and every round here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DualPoseLifter(build_spec(args.variant))
    with torch.no_grad():  # move off the initial values (unit affines, equal fusion) so every fold is exercised
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    spec = model.spec
    batch = args.batch or {"fold-inference": 1, "thread-split": 4, "thread-split-inference": 8}[args.probe]
    if args.probe.startswith("thread-split") and batch < 2:
        raise SystemExit(f"{args.probe} needs --batch of at least 2 (one half per thread)")
    x = torch.randn(batch, spec.T, spec.num_joints, spec.in_channels)
    y = torch.randn(batch, spec.T, spec.num_joints, spec.out_channels)
    if args.probe == "fold-inference":
        check, steps = probe_fold(model, x)
    elif args.probe == "thread-split":
        check, steps = probe_split(model, x, y)
    else:
        check, steps = probe_split_inference(model, x)
    print("equivalence:", check, flush=True)
    started = time.time()
    seconds = alternate(steps, args.rounds, args.warmup)
    speedup, low, high = paired_speedup(seconds["plain"], seconds["lever"])
    frames = batch * spec.T
    result = {
        "probe": args.probe, "variant": args.variant, "batch": batch, "T": spec.T, "rounds": args.rounds,
        "threads": args.threads, **run_context(),
        "load_at_end": os.getloadavg(), "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "equivalence": check,
        "frames_per_s": {name: frames / statistics.median(s) for name, s in seconds.items()},
        "speedup_median": speedup, "speedup_quartiles": [low, high], "seconds": seconds,
    }
    fps = result["frames_per_s"]
    print(f"{args.probe} {args.variant} batch {batch}: plain {fps['plain']:.1f} frames/s, lever {fps['lever']:.1f} "
          f"frames/s; paired speed-up {speedup:.3f} (quartiles {low:.3f}-{high:.3f}, {args.rounds} rounds)")
    if args.json:
        append_record(args.json, result)


if __name__ == "__main__":
    main()
