"""Dataset adapters, by name (``datasets.<name>.adapter`` in params.yaml).

Each is imported only when used. See :mod:`dualpose.data.adapters.base` for the contract.
"""

from __future__ import annotations

import importlib

ADAPTERS = {
    "synthetic": "dualpose.data.adapters.synthetic",
    "mocap_npz": "dualpose.data.adapters.mocap_npz",
    "bvh": "dualpose.data.adapters.bvh",
    "h36m_pickle": "dualpose.data.adapters.h36m_pickle",
    "h36m_videopose": "dualpose.data.adapters.h36m_videopose",
    "mpi_inf_3dhp": "dualpose.data.adapters.mpi_inf_3dhp",
    "keypoints_json": "dualpose.data.adapters.keypoints_json",
}


def get_adapter(name: str):
    try:
        module = ADAPTERS[name]
    except KeyError:
        raise KeyError(f"unknown adapter {name!r}; known adapters: {sorted(ADAPTERS)}") from None
    return importlib.import_module(module)
