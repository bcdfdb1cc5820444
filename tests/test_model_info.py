"""Parameter and MAC counts against the reference figures and a closed-form count."""

from __future__ import annotations

import json

import pytest
import torch

from dualpose.model.config import build_spec
from dualpose.model.info import REFERENCE_FIGURES, count_model, format_model_info, model_info

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rows():
    return {r["variant"]: r for r in model_info()}


@pytest.mark.parametrize("variant", ["XS", "S", "B", "L"])
def test_within_five_percent_of_the_reference(rows, variant):
    row = rows[variant]
    ref_params, ref_macs = REFERENCE_FIGURES[variant]
    assert abs(row["params"] / ref_params - 1) < 0.05
    assert abs(row["macs_per_clip"] / ref_macs - 1) < 0.05
    assert row["params_deviation"] == pytest.approx(row["params"] / ref_params - 1)
    assert row["macs_per_frame"] == pytest.approx(row["macs_per_clip"] / row["T"])


@pytest.mark.parametrize("variant", ["XS", "B"])
def test_counts_match_closed_form(rows, variant):
    spec = build_spec(variant)
    c, t, j, d = spec.dim, spec.T, spec.num_joints, spec.depth
    tokens = t * j
    # per block and token: attention streams 2 x (qkv 3C^2 + proj C^2 + MLP 8C^2), GCN streams
    # 2 x (U, V 2C^2 + MLP 8C^2), fusion 2C x 2; plus embedding and head
    linear = tokens * d * (44 * c * c + 4 * c) + tokens * (3 * c + c * 512 + 512 * 3)
    assert rows[variant]["macs_per_clip"] == linear
    # plus QK^T and AV over joints (2JC) and frames (2TC), skeleton aggregation (JC), kNN similarity (TC)
    assert rows[variant]["macs_total_per_clip"] == linear + tokens * d * c * (3 * j + 3 * t)
    # parameters. Attention sub-block: 2 LayerNorms 4C, layer scales 2C, qkv 3C^2, proj C^2 + C,
    # MLP 8C^2 + 5C. GCN sub-block: the same wrapper 6C + MLP, U and V 2C^2 + 2C, LayerNorm 2C.
    attention_sub = 4 * c + 2 * c + 3 * c * c + (c * c + c) + (8 * c * c + 5 * c)
    graph_sub = 4 * c + 2 * c + (2 * c * c + 2 * c) + 2 * c + (8 * c * c + 5 * c)
    per_block = 2 * attention_sub + 2 * graph_sub + (2 * c * 2 + 2)
    assert per_block == 44 * c * c + 58 * c + 2
    # embedding 4C, joint positions JC, the variant's default frame signal (XS: the relative bias,
    # heads x (2T - 1) per block; B: the (T, C) frame table), final norm 2C, head
    frame_signal = {"XS": ("relative", d * spec.heads * (2 * t - 1)), "B": ("learned", t * c)}[variant]
    assert spec.temporal_pos_emb == frame_signal[0]
    total = d * per_block + (3 * c + c) + j * c + frame_signal[1] + 2 * c + (c * 512 + 512) + (512 * 3 + 3)
    assert rows[variant]["params"] == total


def test_counts_scale_with_length_and_overrides():
    spec = build_spec("XS", {"depth": 2})
    base, longer = count_model(spec), count_model(spec, frames=2 * spec.T)
    assert longer["macs_linear"] == 2 * base["macs_linear"] and longer["params"] == base["params"]
    (row,) = model_info(["XS"], overrides={"depth": 2})
    assert row["depth"] == 2 and row["params_deviation"] is None and row["reference_params"] is None


def test_table_and_json(rows):
    text = format_model_info(list(rows.values()))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["variant", "blocks", "x", "C"]
    xs = next(line for line in lines if line.strip().startswith("XS"))
    assert "12 x 64" in xs and " 27 " in xs and "2.25M" in xs and "1.01G" in xs and "+2.2%" in xs
    assert json.loads(json.dumps(list(rows.values())))[0]["variant"] == "XS"
