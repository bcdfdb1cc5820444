"""`dualpose infer`: keypoint files, image folders and videos through tracking, lifting and outputs."""

import json

import numpy as np
import pyarrow.parquet as pq
import polars as pl
import pytest
from typer.testing import CliRunner

from dualpose.cli import app
from dualpose.skeleton import H36M_17
from dualpose.video.lift import Lifter, resample_track
from dualpose.video.pipeline import InferOptions, run_infer
from dualpose.video.sample import SAMPLE_FILE, make_scene, write_sample_keypoints
from tests.video_support import ScriptedDetector, tiny_weights, write_stick_video

W, H = 320, 180


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny")


@pytest.fixture(scope="module")
def scene():
    return make_scene(seconds=1.0, fps=30.0, seed=3, width=W, height=H)


def test_packaged_sample_is_the_generator_output(tmp_path):
    fresh = write_sample_keypoints(tmp_path / "s.json")
    assert json.loads(fresh.read_text()) == json.loads(SAMPLE_FILE.read_text())


def test_sample_file_through_the_cli_gives_two_tracks_and_every_output(tmp_path, weights):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(out),
                                   "--smooth", "--stature-mm", "1800", "--focal-px", "600", "--cx", "300"])
    assert res.exit_code == 0, res.output
    assert "120 frames, 2 track(s)" in res.output and "{" not in res.output  # tidy lines, no dicts
    with np.load(out / "poses.npz", allow_pickle=False) as z:
        names = z["joint_names"].tolist()
        meta = json.loads(str(z["meta"]))
        assert names == list(H36M_17.joint_names)
        n = 240
        assert z["track"].shape == (n,) and sorted(set(z["track"].tolist())) == [0, 1]
        for key, shape in (("poses_3d", (n, 17, 3)), ("poses_3d_mm", (n, 17, 3)), ("world_mm", (n, 17, 3)),
                           ("root_mm", (n, 3)), ("kp2d", (n, 17, 2)), ("conf2d", (n, 17)),
                           ("poses_3d_mm_smooth", (n, 17, 3)), ("world_mm_smooth", (n, 17, 3))):
            assert z[key].shape == shape, key
        assert z["valid"].all() and np.allclose(z["confidence"], 0.9)
        assert np.abs(z["poses_3d_mm"][:, 0]).max() == 0  # root-relative
        assert not np.array_equal(z["world_mm"], z["world_mm_smooth"])  # raw kept beside the smoothed
        world, poses = z["world_mm"], z["poses_3d_mm"]
    assert meta["units"]["world_mm"] == "mm" and "y up" in meta["axes"]["world_mm"]
    assert meta["stature_mm"] == 1800.0 and meta["stature_assumed"] is False
    assert meta["intrinsics"] == {"focal_px": 600.0, "cx": 300.0, "cy": 180.0, "assumed": False}
    # bone lengths agree: world is a rigid motion of the camera-frame pose
    np.testing.assert_allclose(H36M_17.bone_lengths(world), H36M_17.bone_lengths(poses), rtol=1e-4, atol=1e-2)
    # Parquet, CSV and JSON hold the same numbers
    table = pq.read_table(out / "poses.parquet")
    assert json.loads(table.schema.metadata[b"dualpose"])["joint_names"] == names
    np.testing.assert_allclose(table.column("world_l_knee_y_mm").to_numpy(), world[:, H36M_17.index("l_knee"), 1],
                               rtol=1e-6)
    csv = pl.read_csv(out / "poses.csv")
    np.testing.assert_allclose(csv["cam_head_top_z_mm"].to_numpy(), poses[:, H36M_17.index("head_top"), 2], atol=0.01)
    doc = json.loads((out / "poses.json").read_text())
    assert doc["tracks"][1]["frames"] == 120
    np.testing.assert_allclose(np.array(doc["tracks"][1]["world_mm"]), world[120:], atol=0.051)


def test_person_rule_and_errors(tmp_path, weights):
    out = tmp_path / "one"
    res = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(out),
                                   "--person", "id:1", "--formats", "npz", "--no-viewer"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["poses.npz"]
    with np.load(out / "poses.npz") as z:
        assert set(z["track"].tolist()) == {1}
    bad = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(out),
                                   "--person", "tallest"])
    assert bad.exit_code == 2 and "unknown person rule 'tallest'" in bad.output
    missing = CliRunner().invoke(app, ["infer", str(tmp_path / "nope.mp4"), "--weights", str(weights)])
    assert missing.exit_code == 2 and "nope.mp4" in missing.output and "not found" in missing.output
    no_size = tmp_path / "k.json"
    no_size.write_text(json.dumps([{"frame": 0, "keypoints": [1] * 51}]))
    res = CliRunner().invoke(app, ["infer", str(no_size), "--weights", str(weights)])
    assert res.exit_code == 2 and "k.json: field 'width'" in res.output
    unknown = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", "no-such-weights"])
    assert unknown.exit_code == 2 and "no-such-weights" in unknown.output
    # --render needs pictures to draw on: refused before anything is written
    nothing = tmp_path / "render"
    render = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out", str(nothing),
                                      "--render"])
    assert render.exit_code == 2 and "'--render': expected a video or image folder to draw on" in render.output
    assert not nothing.exists()


def test_mirrored_input_gives_mirrored_output(tmp_path, weights, scene):
    _, coco = scene.project()
    lifter = Lifter.from_weights(weights, device="cpu")
    from dualpose.keypoint_formats import convert_keypoints

    kp, conf = convert_keypoints(coco[0], None, "coco17")
    out = lifter.lift(kp, conf, W, H, 30.0)
    mirrored = kp[:, H36M_17.flip_permutation].copy()
    mirrored[..., 0] = W - mirrored[..., 0]
    out_m = lifter.lift(mirrored, conf[:, H36M_17.flip_permutation], W, H, 30.0)
    np.testing.assert_allclose(out_m, out[:, H36M_17.flip_permutation] * np.array([-1, 1, 1]), atol=2e-5)
    # --stride T: windows do not overlap, so the first T frames are exactly one window's prediction
    t = lifter.window
    once = lifter.lift(kp, conf, W, H, 30.0, stride=t)
    assert once.shape == out.shape
    np.testing.assert_allclose(once[:t], lifter.lift(kp[:t], conf[:t], W, H, 30.0), atol=1e-6)
    assert not np.allclose(once, out, atol=1e-6)  # the default averages overlapping windows


def test_blend_option_reaches_the_lifter_and_bad_values_are_refused(tmp_path, weights, scene):
    """--blend taper (default) and uniform differ only where windows overlap; a bad value is a
    one-line error naming the option, before anything is written."""
    _, coco = scene.project()
    from dualpose.keypoint_formats import convert_keypoints

    kp, conf = convert_keypoints(coco[0], None, "coco17")
    taper = Lifter.from_weights(weights, device="cpu")
    uniform = Lifter.from_weights(weights, device="cpu", blend="uniform")
    assert taper.blend == "taper"
    a, b = taper.lift(kp, conf, W, H, 30.0), uniform.lift(kp, conf, W, H, 30.0)
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-6)
    t = taper.window  # without overlap the blends agree
    np.testing.assert_allclose(taper.lift(kp, conf, W, H, 30.0, stride=t)[:t],
                               uniform.lift(kp, conf, W, H, 30.0, stride=t)[:t], atol=1e-6)
    with pytest.raises(ValueError, match="blend must be one of uniform, taper"):
        Lifter.from_weights(weights, device="cpu", blend="hann")
    outs = {}
    for blend in ("uniform", "taper"):
        res = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out",
                                       str(tmp_path / blend), "--formats", "npz", "--no-viewer", "--blend", blend])
        assert res.exit_code == 0, res.output
        with np.load(tmp_path / blend / "poses.npz") as z:
            outs[blend] = z["poses_3d"].copy()
    assert not np.allclose(outs["uniform"], outs["taper"], atol=1e-6)
    bad = CliRunner().invoke(app, ["infer", str(SAMPLE_FILE), "--weights", str(weights), "--out",
                                   str(tmp_path / "bad"), "--blend", "hann"])
    assert bad.exit_code != 0 and "--blend must be one of uniform, taper, got 'hann'" in bad.output
    assert not (tmp_path / "bad").exists()


def test_fps_resampling_to_the_model_rate(tmp_path, scene):
    """Weights trained at 30 fps: a 60 fps track is lifted at 30 fps and mapped back to 60 fps frames."""
    w30 = tiny_weights(tmp_path / "w30", fps=30.0)
    lifter = Lifter.from_weights(w30, device="cpu")
    assert lifter.model_fps == 30.0
    from dualpose.keypoint_formats import convert_keypoints

    kp30, conf30 = convert_keypoints(scene.project()[1][0], None, "coco17")
    t30 = np.arange(len(kp30)) / 30.0
    t60 = np.arange(2 * len(kp30) - 1) / 60.0
    kp60 = resample_track(kp30, t30, t60)
    out30 = lifter.lift(kp30, conf30, W, H, 30.0)
    out60 = lifter.lift(kp60, np.ones(kp60.shape[:2], np.float32), W, H, 60.0)
    assert out60.shape == (len(t60), 17, 3)
    np.testing.assert_allclose(out60[::2], out30, atol=1e-4)  # same model input on the shared frames
    np.testing.assert_allclose(resample_track(np.array([[0.0], [np.nan], [2.0]]), np.arange(3.0), np.array([1.0])),
                               [[1.0]])


def test_video_and_image_folder_with_a_plugged_in_detector(tmp_path, weights, scene, monkeypatch):
    pytest.importorskip("imageio_ffmpeg", reason="video needs the video extra: pip install 'dualpose[video]'")
    _, coco = scene.project()
    video = write_stick_video(tmp_path / "clip.mp4", coco, W, H, 30.0)
    from dualpose.video.decode import iter_frames, probe

    info = probe(video)
    assert (info.width, info.height, info.fps) == (W, H, 30.0)
    frames = list(iter_frames(video))
    assert len(frames) == 30 and frames[0].shape == (H, W, 3)
    lifter = Lifter.from_weights(weights, device="cpu")
    run = run_infer(video, tmp_path / "out", lifter, InferOptions(render=True, formats=("npz",)),
                    detector=ScriptedDetector(coco))
    assert run.frames == 30 and len(run.result.tracks) == 2
    assert {"decode", "detector", "lifter", "rendering"} <= set(run.seconds)
    mp4 = run.files["mp4"]
    rendered = list(iter_frames(mp4))
    assert len(rendered) == 30
    assert rendered[0].shape == (H, W + H, 3)  # the video beside a square 3D panel
    left, panel = rendered[10][:, :W].astype(int), rendered[10][:, W:].astype(int)
    # the 2D overlay draws blue left limbs on the video; the 3D panel draws them on a dark background
    blue = lambda img: ((img[..., 2] > 180) & (img[..., 0] < 120)).sum()
    assert blue(left) > 20 and blue(panel) > 20
    assert blue(frames[10].astype(int)) == 0
    # an image folder is read the same way (frame rate from --fps)
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames[:12]):
        Image.fromarray(f).save(folder / f"{i:04d}.png")
    run2 = run_infer(folder, tmp_path / "out2", lifter, InferOptions(fps=30.0, formats=("npz",), viewer=False),
                     detector=ScriptedDetector([c[:12] for c in coco]))
    assert run2.frames == 12 and [len(t.frame) for t in run2.result.tracks] == [12, 12]
    # no detector available in this environment: a clear message, not a traceback
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        monkeypatch.delenv("DUALPOSE_MEDIAPIPE_PYTHON", raising=False)
        res = CliRunner().invoke(app, ["infer", str(video), "--weights", str(weights), "--out", str(tmp_path / "x")])
        assert res.exit_code == 2 and "--detector-python" in res.output, res.output


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_lifting_on_the_gpu_matches_the_cpu(weights, scene):
    from dualpose.keypoint_formats import convert_keypoints

    kp, conf = convert_keypoints(scene.project()[1][0], None, "coco17")
    gpu = Lifter.from_weights(weights)  # default device: cuda when available
    assert gpu.device.type == "cuda"
    cpu = Lifter.from_weights(weights, device="cpu")
    np.testing.assert_allclose(gpu.lift(kp, conf, W, H, 30.0), cpu.lift(kp, conf, W, H, 30.0), atol=1e-4)


def test_bad_keypoint_files_name_the_file_and_field(tmp_path):
    from dualpose.errors import DataFormatError
    from dualpose.video.detectors import load_keypoint_file

    cases = [
        ("coco17", {"width": 10, "height": 10, "fps": 30, "annotations": [{"frame": 0, "keypoints": [1, 2, 3]}]},
         "annotations[0].keypoints"),
        ("coco17", {"width": 10, "height": 10, "fps": 30, "annotations": [{"frame": -1, "keypoints": [0] * 51}]},
         "annotations[0].frame"),
        ("blazepose33", {"width": 10, "height": 10, "fps": 30, "frames": [{"frame": 0, "landmarks": [{"x": 0}] * 5}]},
         "frames[0].landmarks"),
        ("coco17", {"width": 10, "height": 10, "fps": 30, "annotations": []}, "at least one detected person"),
        ("coco17", {"width": 10, "height": -4, "fps": 30, "annotations": []}, "height"),
    ]
    for i, (fmt, doc, where) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(DataFormatError, match=f"bad{i}.json") as err:
            load_keypoint_file(path, fmt)
        assert where in str(err.value)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataFormatError, match="broken.json.*valid JSON"):
        load_keypoint_file(broken, "coco17")
