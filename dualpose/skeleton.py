"""Skeleton definitions as data.

The canonical skeleton of every table, model and metric is the 17-joint Human3.6M skeleton
(paper-notes section 1). Nothing else in the library hard-codes a joint count: code asks the
:class:`Skeleton` it was given (``skeleton.num_joints``, ``skeleton.flip_permutation`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Skeleton:
    """A kinematic tree: joint names, parent indices (-1 for the root) and left/right pairs."""

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    root: int = 0
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.joint_names) != len(self.parents):
            raise ValueError(
                f"skeleton {self.name!r}: {len(self.joint_names)} joint names but "
                f"{len(self.parents)} parents"
            )
        roots = [i for i, p in enumerate(self.parents) if p < 0]
        if roots != [self.root]:
            raise ValueError(f"skeleton {self.name!r}: expected the single root {self.root}, got {roots}")
        for i, p in enumerate(self.parents):
            if p >= len(self.parents):
                raise ValueError(f"skeleton {self.name!r}: joint {i} has parent {p} out of range")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.joint_names)})

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"skeleton {self.name!r} has no joint {name!r}; joints: {self.joint_names}") from None

    @property
    def bones(self) -> tuple[tuple[int, int], ...]:
        """(parent, child) pairs, one per non-root joint, in joint order."""
        return tuple((p, c) for c, p in enumerate(self.parents) if p >= 0)

    @property
    def flip_permutation(self) -> np.ndarray:
        """Index array that swaps left and right joints: ``flipped = pose[..., perm, :]``."""
        perm = np.arange(self.num_joints)
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm

    @property
    def left_joints(self) -> tuple[int, ...]:
        return tuple(left for left, _ in self.flip_pairs)

    @property
    def right_joints(self) -> tuple[int, ...]:
        return tuple(right for _, right in self.flip_pairs)

    def adjacency(self) -> np.ndarray:
        """Symmetric 0/1 adjacency of the bones (no self loops), shape (J, J)."""
        adj = np.zeros((self.num_joints, self.num_joints), dtype=np.float32)
        for p, c in self.bones:
            adj[p, c] = adj[c, p] = 1.0
        return adj

    def bone_lengths(self, poses: np.ndarray) -> np.ndarray:
        """Bone lengths of poses (..., J, 3) -> (..., num_bones)."""
        parents = np.array([p for p, _ in self.bones])
        children = np.array([c for _, c in self.bones])
        return np.linalg.norm(poses[..., children, :] - poses[..., parents, :], axis=-1)


H36M_JOINT_NAMES = (
    "pelvis",
    "r_hip",
    "r_knee",
    "r_ankle",
    "l_hip",
    "l_knee",
    "l_ankle",
    "spine",
    "thorax",
    "neck_nose",
    "head_top",
    "l_shoulder",
    "l_elbow",
    "l_wrist",
    "r_shoulder",
    "r_elbow",
    "r_wrist",
)

H36M_17 = Skeleton(
    name="h36m17",
    joint_names=H36M_JOINT_NAMES,
    parents=(-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15),
    # (left, right)
    flip_pairs=((4, 1), (5, 2), (6, 3), (11, 14), (12, 15), (13, 16)),
    root=0,
)

SKELETONS: dict[str, Skeleton] = {H36M_17.name: H36M_17}


def get_skeleton(name: str) -> Skeleton:
    try:
        return SKELETONS[name]
    except KeyError:
        raise KeyError(f"unknown skeleton {name!r}; known: {sorted(SKELETONS)}") from None
