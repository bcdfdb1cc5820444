"""The embedded default data set: procedural human motion filmed by virtual cameras. No files.

Subjects S1..Sn (different statures and proportions) perform every action
(:data:`dualpose.data.synthetic_motion.ACTIONS`) ``sequences_per_action`` times; each sequence is
filmed by ``cameras`` virtual cameras with detector-like 2D noise. Parts: ``train`` (all
subjects but the test subjects) and ``test``.

The default size, 5 subjects x 7 actions x 1 sequence x 6 s x 50 fps x 4 cameras = 42,000 frames,
keeps pretraining, finetuning and evaluation of the XS model to a few minutes on 2 CPU cores.
Every sequence has its own random stream (seed, subject, action, sequence), so adding subjects
or actions leaves the existing sequences unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from dualpose.data.adapters.base import TablePart
from dualpose.data.synthetic_motion import ACTIONS, generate_motion, make_subjects, sequence_seed
from dualpose.data.virtual_capture import CaptureOptions, capture_motion, concat_frames
from dualpose.skeleton import H36M_17, Skeleton

REQUIRED_FILES: tuple[str, ...] = ()


class Options(CaptureOptions):
    seed: int = 0
    subjects: int = Field(5, ge=1)
    test_subjects: list[str] | None = None  # default: the last subject
    actions: list[str] = Field(default_factory=lambda: list(ACTIONS))
    sequences_per_action: int = Field(1, ge=1)
    seconds: float = Field(6.0, gt=0)
    fps: float = Field(50.0, gt=0)
    heights_m: tuple[float, float] = (1.55, 1.95)  # statures are spread over this range
    motion_noise_deg: float = Field(3.0, ge=0)  # low-pass joint-angle noise on top of each action

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ACTIONS))
        if unknown:
            raise ValueError(f"unknown actions {unknown}; known: {list(ACTIONS)}")
        if not value:
            raise ValueError("at least one action is needed")
        return value

    @model_validator(mode="after")
    def _known_test_subjects(self) -> "Options":
        names = self.subject_names()
        unknown = sorted(set(self.test_subjects or []) - set(names))
        if unknown:
            raise ValueError(f"test_subjects {unknown} are not among the subjects {names}")
        return self

    def subject_names(self) -> list[str]:
        return [f"S{i + 1}" for i in range(self.subjects)]

    def resolved_test_subjects(self) -> list[str]:
        return list(self.test_subjects) if self.test_subjects is not None else self.subject_names()[-1:]


def convert(files: dict[str, Path], options: Options, dataset: str,
            skeleton: Skeleton = H36M_17) -> Iterator[TablePart]:
    """Yield ``train`` and ``test`` parts (``files`` is ignored: nothing is read)."""
    heights = (options.heights_m[0] * 1000.0, options.heights_m[1] * 1000.0)
    bodies = make_subjects(options.subjects, options.seed, heights, skeleton)
    test = set(options.resolved_test_subjects())
    parts: dict[str, list] = {"train": [], "test": []}
    for si, body in enumerate(bodies):
        split = "test" if body.name in test else "train"
        for action in options.actions:
            ai = ACTIONS.index(action)
            for k in range(options.sequences_per_action):
                world = generate_motion(body, action, options.seconds, options.fps,
                                        sequence_seed(options.seed, si, action, k), options.motion_noise_deg)
                parts[split].append(capture_motion(
                    world, options.fps, options, np.random.SeedSequence([options.seed, si, ai, k, 0xCA3]),
                    dataset=dataset, split=split, subject=body.name, action=action, sequence=f"{action}_{k + 1}",
                    skeleton=skeleton,
                ))
    for name in ("train", "test"):
        yield TablePart(name=name, frames=concat_frames(parts[name], skeleton))
