"""Read frames from a video file or a folder of images; write an MP4.

Video files are decoded by the ffmpeg binary that the ``imageio-ffmpeg`` wheel ships (optional
extra ``video``): no system ffmpeg is needed. Frames come out as RGB ``uint8`` arrays (H, W, 3),
one at a time, so memory does not grow with the video's length.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualpose.errors import DataFormatError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def _ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ImportError("reading and writing video needs imageio-ffmpeg: pip install 'dualpose[video]'") from None
    return imageio_ffmpeg


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    frames: int | None  # as the container states it (may be an estimate); None for unknown


def is_image_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataFormatError(folder, "<folder>", f"image files ({', '.join(IMAGE_SUFFIXES)})", "none")
    return files


def probe(path: str | os.PathLike, fps: float | None = None) -> VideoInfo:
    """Size, frame rate and frame count of a video file or an image folder (``fps`` for folders)."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        files = image_files(path)
        with Image.open(files[0]) as im:
            width, height = im.size
        if fps is None:
            raise DataFormatError(path, "fps", "a frame rate for a folder of images (--fps)", "none given")
        return VideoInfo(path, width, height, float(fps), len(files))
    if not path.is_file():
        raise DataFormatError(path, "<file>", "an existing video file or image folder", "not found")
    reader = _ffmpeg().read_frames(str(path))
    try:
        meta = next(reader)
    except (RuntimeError, OSError) as exc:
        raise DataFormatError(path, "<file>", "a video ffmpeg can decode", str(exc).splitlines()[0]) from None
    finally:
        reader.close()
    width, height = (int(v) for v in meta["size"])
    nframes = meta.get("nframes")
    frames = int(nframes) if isinstance(nframes, (int, float)) and np.isfinite(nframes) and nframes > 0 else None
    return VideoInfo(path, width, height, float(fps or meta.get("fps") or 0.0) or 30.0, frames)


def iter_frames(path: str | os.PathLike, limit: int | None = None) -> Iterator[np.ndarray]:
    """RGB uint8 frames (H, W, 3) of a video file or an image folder, in order."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        for i, file in enumerate(image_files(path)):
            if limit is not None and i >= limit:
                return
            with Image.open(file) as im:
                yield np.asarray(im.convert("RGB"))
        return
    reader = _ffmpeg().read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        width, height = (int(v) for v in meta["size"])
        for i, raw in enumerate(reader):
            if limit is not None and i >= limit:
                return
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
    finally:
        reader.close()


class VideoWriter:
    """``with VideoWriter(path, fps) as w: w.write(frame)``: H.264 MP4 (yuv420p, plays in browsers).

    Written under a temporary name and renamed at the end, so a failed render leaves no half file.
    """

    def __init__(self, path: str | os.PathLike, fps: float) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp{os.getpid()}{self.path.suffix}")
        self._gen = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self._gen is None:
            h, w = frame.shape[:2]
            if h % 2 or w % 2:
                raise ValueError(f"frame size {w}x{h}: yuv420p needs even width and height")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._gen = _ffmpeg().write_frames(str(self._tmp), (w, h), fps=self.fps, codec="libx264",
                                               pix_fmt_out="yuv420p", quality=None,
                                               output_params=["-crf", "23", "-preset", "veryfast",
                                                              "-movflags", "+faststart"],
                                               macro_block_size=2, ffmpeg_log_level="error")
            self._gen.send(None)
        self._gen.send(frame)
        self.frames += 1

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._gen is not None:
            self._gen.close()
        if exc_type is None and self.frames:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)
