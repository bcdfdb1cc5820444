import numpy as np
import pytest

from dualpose.skeleton import H36M_17, Skeleton, get_skeleton


def test_h36m_definition():
    sk = get_skeleton("h36m17")
    assert sk.num_joints == 17 and sk.root == 0
    assert len(sk.bones) == 16
    assert sk.joint_names[sk.index("l_wrist")] == "l_wrist" and sk.index("l_wrist") == 13
    perm = sk.flip_permutation
    assert perm[4] == 1 and perm[1] == 4 and perm[13] == 16 and perm[0] == 0
    np.testing.assert_array_equal(perm[perm], np.arange(17))
    adj = sk.adjacency()
    assert adj.sum() == 32 and (adj == adj.T).all()
    names = sk.joint_names
    for left, right in sk.flip_pairs:
        assert names[left].startswith("l_") and names[right].startswith("r_")
        assert names[left][2:] == names[right][2:]


def test_bone_lengths_of_a_known_pose():
    pose = np.zeros((17, 3))
    for i, (p, c) in enumerate(H36M_17.bones):
        pose[c] = pose[p] + [0, 0, i + 1]  # bone i along z with length i + 1
    np.testing.assert_allclose(H36M_17.bone_lengths(pose), np.arange(1, 17))


def test_invalid_skeletons():
    with pytest.raises(ValueError, match="single root"):
        Skeleton("x", ("a", "b"), (-1, -1), ())
    with pytest.raises(KeyError, match="unknown skeleton"):
        get_skeleton("nope")
