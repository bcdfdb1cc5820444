"""Human3.6M camera calibration: the dataset's published constants, and its projection model.

The numbers are facts of the dataset (as distributed with its ``cameras.h5`` / metadata and
republished by VideoPose3D): four cameras, identical intrinsics for every subject, and per-subject
extrinsics (S2, S3 and S4 have none: their videos are not distributed).

Conventions of the published extrinsics: ``orientation`` is a unit quaternion (w, x, y, z) that
rotates *camera* axes into *world* axes, and ``translation`` is the camera centre in world
millimetres. Hence ``X_cam = R(q)^T (X_world - C)``; :func:`camera` converts this to the library's
world->camera ``R``, ``t`` (:mod:`dualpose.camera`: ``X_cam = R X_world + t``, x right, y down,
z forward).

Distortion: Human3.6M's own model (the dataset's MATLAB ``ProjectPointRadial``), with the
tangential pair in the order VideoPose3D publishes, ``(p1, p2)``::

    r2 = x^2 + y^2;  radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3;  tan = p1 x + p2 y
    x_d = x (radial + tan) + p1 r2;   y_d = y (radial + tan) + p2 r2

Its tangential terms differ from OpenCV's (which :meth:`dualpose.camera.Camera.distort` follows):
with these coefficients the two disagree by up to 0.8 px in the central 600 x 600 px and up to
2.6 px in the image corners. :func:`project` implements the dataset's model exactly; use it to
reproduce the dataset's 2D. The keypoint table's ``cam_intrinsics`` carry these coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualpose.camera import Camera

FPS = 50.0
CAMERA_IDS: tuple[str, ...] = ("54138969", "55011271", "58860488", "60457274")  # ca_01 .. ca_04


@dataclass(frozen=True)
class Intrinsics:
    center: tuple[float, float]  # cx, cy px
    focal_length: tuple[float, float]  # fx, fy px
    radial: tuple[float, float, float]  # k1, k2, k3
    tangential: tuple[float, float]  # p1, p2 (Human3.6M model, see module docstring)
    width: int
    height: int

    def vector(self) -> np.ndarray:
        """``fx fy cx cy k1 k2 k3 p1 p2`` (the keypoint table's ``cam_intrinsics``)."""
        return np.array([*self.focal_length, *self.center, *self.radial, *self.tangential], dtype=np.float64)


@dataclass(frozen=True)
class Extrinsics:
    orientation: tuple[float, float, float, float]  # quaternion w, x, y, z: camera -> world
    translation: tuple[float, float, float]  # camera centre, world mm


INTRINSICS: dict[str, Intrinsics] = {
    "54138969": Intrinsics(
        center=(512.54150390625, 515.4514770507812),
        focal_length=(1145.0494384765625, 1143.7811279296875),
        radial=(-0.20709891617298126, 0.24777518212795258, -0.0030751503072679043),
        tangential=(-0.0009756988729350269, -0.00142447161488235),
        width=1000, height=1002,
    ),
    "55011271": Intrinsics(
        center=(508.8486328125, 508.0649108886719),
        focal_length=(1149.6756591796875, 1147.5916748046875),
        radial=(-0.1942136287689209, 0.2404085397720337, 0.006819975562393665),
        tangential=(-0.0016190266469493508, -0.0027408944442868233),
        width=1000, height=1000,
    ),
    "58860488": Intrinsics(
        center=(519.8158569335938, 501.40264892578125),
        focal_length=(1149.1407470703125, 1148.7989501953125),
        radial=(-0.2083381861448288, 0.25548800826072693, -0.0024604974314570427),
        tangential=(0.0014843869721516967, -0.0007599993259645998),
        width=1000, height=1000,
    ),
    "60457274": Intrinsics(
        center=(514.9682006835938, 501.88201904296875),
        focal_length=(1145.5113525390625, 1144.77392578125),
        radial=(-0.198384091258049, 0.21832367777824402, -0.008947807364165783),
        tangential=(-0.0005872055771760643, -0.0018133620033040643),
        width=1000, height=1002,
    ),
}

# subject -> one Extrinsics per camera, in CAMERA_IDS order
_EXTRINSICS_TABLE: dict[str, tuple[tuple[tuple[float, float, float, float], tuple[float, float, float]], ...]] = {
    "S1": (
        ((0.1407056450843811, -0.1500701755285263, -0.755240797996521, 0.6223280429840088),
         (1841.1070556640625, 4955.28466796875, 1563.4454345703125)),
        ((0.6157187819480896, -0.764836311340332, -0.14833825826644897, 0.11794740706682205),
         (1761.278564453125, -5078.0068359375, 1606.2650146484375)),
        ((0.14651472866535187, -0.14647851884365082, 0.7653023600578308, -0.6094175577163696),
         (-1846.7777099609375, 5215.04638671875, 1491.972412109375)),
        ((0.5834008455276489, -0.7853162288665771, 0.14548823237419128, -0.14749594032764435),
         (-1794.7896728515625, -3722.698974609375, 1574.8927001953125)),
    ),
    "S5": (
        ((0.1467377245426178, -0.162370964884758, -0.7551892995834351, 0.6178938746452332),
         (2097.3916015625, 4880.94482421875, 1605.732421875)),
        ((0.6159758567810059, -0.7626792192459106, -0.15728192031383514, 0.1189815029501915),
         (2031.7008056640625, -5167.93310546875, 1612.923095703125)),
        ((0.14291371405124664, -0.12907841801643372, 0.7678384780883789, -0.6110143065452576),
         (-1620.5948486328125, 5171.65869140625, 1496.43701171875)),
        ((0.5920479893684387, -0.7814217805862427, 0.1274748593568802, -0.15036417543888092),
         (-1637.1737060546875, -3867.3173828125, 1547.033203125)),
    ),
    "S6": (
        ((0.1337897777557373, -0.15692396461963654, -0.7571090459823608, 0.6198879480361938),
         (1935.4517822265625, 4950.24560546875, 1618.0838623046875)),
        ((0.6147197484970093, -0.7628812789916992, -0.16174767911434174, 0.11819244921207428),
         (1969.803955078125, -5128.73876953125, 1632.77880859375)),
        ((0.1529948115348816, -0.13529130816459656, 0.7646096348762512, -0.6112781167030334),
         (-1769.596435546875, 5185.361328125, 1476.993408203125)),
        ((0.5916101336479187, -0.7804774045944214, 0.12832270562648773, -0.1561593860387802),
         (-1721.668701171875, -3884.13134765625, 1540.4879150390625)),
    ),
    "S7": (
        ((0.1435241848230362, -0.1631336808204651, -0.7548328638076782, 0.6188824772834778),
         (1974.512939453125, 4926.3544921875, 1597.8326416015625)),
        ((0.6141672730445862, -0.7638262510299683, -0.1596645563840866, 0.1177929937839508),
         (1937.0584716796875, -5119.7900390625, 1631.5665283203125)),
        ((0.14550060033798218, -0.12874816358089447, 0.7660516500473022, -0.6127139329910278),
         (-1741.8111572265625, 5208.24951171875, 1464.8245849609375)),
        ((0.5912848114967346, -0.7821764349937439, 0.12445473670959473, -0.15196487307548523),
         (-1734.7105712890625, -3832.42138671875, 1548.5830078125)),
    ),
    "S8": (
        ((0.14110587537288666, -0.15589867532253265, -0.7561917304992676, 0.619644045829773),
         (2150.65185546875, 4896.1611328125, 1611.9046630859375)),
        ((0.6169601678848267, -0.7647668123245239, -0.14846350252628326, 0.11158157885074615),
         (2219.965576171875, -5148.453125, 1613.0440673828125)),
        ((0.1471444070339203, -0.13377119600772858, 0.7670128345489502, -0.6100369691848755),
         (-1571.2215576171875, 5137.0185546875, 1498.1761474609375)),
        ((0.5927824378013611, -0.7825870513916016, 0.12147816270589828, -0.14631995558738708),
         (-1476.913330078125, -3896.7412109375, 1547.97216796875)),
    ),
    "S9": (
        ((0.15540587902069092, -0.15548215806484222, -0.7532095313072205, 0.6199594736099243),
         (2044.45849609375, 4935.1171875, 1481.2275390625)),
        ((0.618784487247467, -0.7634735107421875, -0.14132238924503326, 0.11933968216180801),
         (1990.959716796875, -5123.810546875, 1568.8048095703125)),
        ((0.13357827067375183, -0.1367100477218628, 0.7689454555511475, -0.6100738644599915),
         (-1670.9921875, 5211.98583984375, 1528.387939453125)),
        ((0.5879399180412292, -0.7823407053947449, 0.1427614390850067, -0.14794869720935822),
         (-1696.04345703125, -3827.099853515625, 1591.4127197265625)),
    ),
    "S11": (
        ((0.15232472121715546, -0.15442320704460144, -0.7547563314437866, 0.6191070079803467),
         (2098.440185546875, 4926.5546875, 1500.278564453125)),
        ((0.6189449429512024, -0.7600917220115662, -0.15300633013248444, 0.1255258321762085),
         (2083.182373046875, -4912.1728515625, 1561.07861328125)),
        ((0.14943228662014008, -0.15650227665901184, 0.7681233882904053, -0.6026304364204407),
         (-1609.8153076171875, 5177.3359375, 1537.896728515625)),
        ((0.5894251465797424, -0.7818877100944519, 0.13991211354732513, -0.14715361595153809),
         (-1590.738037109375, -3854.1689453125, 1578.017578125)),
    ),
}

EXTRINSICS: dict[str, dict[str, Extrinsics]] = {
    subject: {cam: Extrinsics(q, t) for cam, (q, t) in zip(CAMERA_IDS, rows)}
    for subject, rows in _EXTRINSICS_TABLE.items()
}
SUBJECTS: tuple[str, ...] = tuple(EXTRINSICS)


def camera_id_from_index(index: int) -> str:
    """Camera id of Human3.6M's ``ca_01`` .. ``ca_04`` (1-based)."""
    if not 1 <= index <= len(CAMERA_IDS):
        raise KeyError(f"Human3.6M has cameras ca_01..ca_{len(CAMERA_IDS):02d}, not ca_{index:02d}")
    return CAMERA_IDS[index - 1]


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) of unit quaternions (..., 4) in (w, x, y, z) order."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def intrinsics(camera_id: str) -> Intrinsics:
    try:
        return INTRINSICS[str(camera_id)]
    except KeyError:
        raise KeyError(f"unknown Human3.6M camera {camera_id!r}; cameras: {CAMERA_IDS}") from None


def world_to_camera_rt(subject: str, camera_id: str) -> tuple[np.ndarray, np.ndarray]:
    """World->camera rotation (3, 3) and translation (3,) mm: ``X_cam = R @ X_world + t``."""
    try:
        ext = EXTRINSICS[subject][str(camera_id)]
    except KeyError:
        raise KeyError(f"no Human3.6M extrinsics for subject {subject!r}, camera {camera_id!r}; "
                       f"subjects with calibration: {SUBJECTS}") from None
    r_cam_to_world = quaternion_to_matrix(np.array(ext.orientation))
    rotation = r_cam_to_world.T
    translation = -rotation @ np.array(ext.translation, dtype=np.float64)
    return rotation, translation


def camera(subject: str, camera_id: str) -> Camera:
    """The library's :class:`~dualpose.camera.Camera` for one subject's camera."""
    intr = intrinsics(camera_id)
    rotation, translation = world_to_camera_rt(subject, camera_id)
    return Camera(
        fx=intr.focal_length[0], fy=intr.focal_length[1], cx=intr.center[0], cy=intr.center[1],
        width=intr.width, height=intr.height, R=rotation, t=translation,
        k=intr.radial, p=intr.tangential, name=f"{subject}.{camera_id}",
    )


def project(points_cam: np.ndarray, intrinsics_vector: np.ndarray) -> np.ndarray:
    """Project camera-frame points (..., 3) mm to pixels (..., 2) with Human3.6M's distortion model.

    ``intrinsics_vector`` is ``fx fy cx cy k1 k2 k3 p1 p2`` (see :meth:`Intrinsics.vector`).
    """
    fx, fy, cx, cy, k1, k2, k3, p1, p2 = np.asarray(intrinsics_vector, dtype=np.float64).reshape(9)
    points_cam = np.asarray(points_cam, dtype=np.float64)
    z = points_cam[..., 2]
    if np.any(z <= 0):
        raise ValueError("project: points behind the camera (z <= 0)")
    x = points_cam[..., 0] / z
    y = points_cam[..., 1] / z
    r2 = x * x + y * y
    scale = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3 + p1 * x + p2 * y
    xd = x * scale + p1 * r2
    yd = y * scale + p2 * r2
    return np.stack([fx * xd + cx, fy * yd + cy], axis=-1)
