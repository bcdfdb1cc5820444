"""Exponential-moving-average teacher with a rising decay (data2vec style)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, total_steps: int, start: float, end: float, ramp_fraction: float) -> float:
    """Decay rising linearly from ``start`` to ``end`` over the first ``ramp_fraction`` of training."""
    ramp = max(1, int(round(total_steps * ramp_fraction)))
    if step >= ramp:
        return end
    return start + (end - start) * step / ramp


class EMATeacher(nn.Module):
    """A frozen copy of a module, updated as ``teacher = d * teacher + (1 - d) * student``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.train(False)

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        student_params = dict(student.named_parameters())
        teacher, source = [], []
        for name, t_param in self.module.named_parameters():
            teacher.append(t_param)
            source.append(student_params[name].detach().to(t_param.dtype))
        if teacher:  # one fused call over every tensor (a per-tensor loop costs ~1 small op each)
            torch._foreach_lerp_(teacher, source, 1.0 - decay)
        student_buffers = dict(student.named_buffers())
        for name, t_buf in self.module.named_buffers():
            t_buf.copy_(student_buffers[name])

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self, mode: bool = True):  # the teacher always stays in eval mode
        super().train(False)
        return self
