"""From a video (or a folder of images, or a detector's keypoint file) to 3D poses per person.

One job per module: :mod:`.decode` (frames in, MP4 out), :mod:`.detectors` (2D keypoints per
frame), :mod:`.tracking` (detections -> person tracks), :mod:`.lift` (a track -> 3D through the
training codec), :mod:`.bones` (one length per bone per track), :mod:`.metric` (scale, root
trajectory, floor), :mod:`.smoothing` (One-Euro), :mod:`.outputs` (npz / Parquet / CSV / JSON),
:mod:`.render` (MP4), :mod:`.viewer` (HTML) and
:mod:`.pipeline` (all of it, for ``dualpose infer``). Nothing here imports a detector or a video
library at module import time: they are optional extras (``pip install dualpose[video]``).
"""
