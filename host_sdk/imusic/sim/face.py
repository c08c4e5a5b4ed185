"""Kinematic face model: skin displacement and rotation at face sites as a function of the 52 ARKit
blendshapes.

Frames (docs/sim.md): the face frame H has its origin midway between the tragi, x forward, y to the
subject's left, z up, millimetres. The canonical adult face is the geometry every position here
refers to; a subject's face is the canonical one scaled (`FaceShape`).

The model is physical rather than a lookup table. Each blendshape is a displacement field over the
face:

* the mandible (jawOpen, jawLeft, jawRight, jawForward) moves rigidly: rotation about the
  temporomandibular axis plus condylar translation. Skin follows it with a smooth membership weight
  (1 on the chin and lower lip, ~0.3-0.4 over the cheek between the jaws, 0 above the level of the
  mouth corners and behind the ramus);
* muscle-driven shapes are sums of compactly supported bumps (triweight kernel
  (1 - r^2/R^2)^3, C2, zero beyond R), each with a peak displacement along the muscle's pull.

What is linear: the soft-tissue field is linear in the weights before a mild saturation of its
magnitude (`SOFT_LIMIT_MM`: 98 % linear at 10 mm, capped near 18 mm, so co-activations summing past
one stay physical). The jaw's rotation angle is linear in jawOpen and in jawLeft - jawRight; the
condylar translation grows with jawOpen squared (the condyle glides mostly late in the opening) and
its forward total is soft-limited. Soft tissue and mandible displacements add.

Rotation of the skin at a site (what a glued IMU's orientation follows): the mandible's rigid
rotation times the membership weight, plus the rotational part of the displacement gradient taken
along the skin only (tangent plane from the site normal), which is exact for a rigid rotation and
0.5 * curl for small deformations. Rotation vectors of the parts add (exact for the jaw alone,
first order for the soft tissue).

Composing a sensor's world pose (the IMU layer uses this, `site_world_pose`):

    R_world_sensor(t) = R_world_head(t) @ R_head_skin(t) @ R_skin_sensor
    R_head_skin(t)    = exp(rotvec_rad(t)) @ nominal_mount_frame(normal)
    p_world_m(t)      = p_head_m(t) + R_world_head(t) @ (rest_mm + displacement_mm(t)) / 1000

where R_skin_sensor is the mounting misalignment (identity for a perfect mounting).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from imusic.arkit import BLENDSHAPES, INDEX, N_BLENDSHAPES

__all__ = ["FaceShape", "FaceModel", "LANDMARKS_MM", "SOFT_LIMIT_MM", "JAW_OPEN_DEG", "nominal_mount_frame",
           "site_world_pose", "rotvec_to_matrix"]

# Landmarks of the canonical face, H frame, mm (left side; the right side mirrors y). Chosen from
# adult anthropometry (tragion-nasion ~100 mm, nasion-menton ~120 mm, interpupillary ~64 mm,
# bicondylar ~110 mm, mouth width ~50 mm); they set the bumps' centres below.
LANDMARKS_MM: dict[str, tuple[float, float, float]] = {
    "tragion_left": (0.0, 72.0, 0.0),
    "condyle_left": (12.0, 55.0, -5.0),
    "nasion": (98.0, 0.0, 26.0),
    "nasal_dorsum": (117.0, 0.0, 2.0),
    "pronasale": (128.0, 0.0, -20.0),
    "subnasale": (112.0, 0.0, -32.0),
    "pupil_left": (88.0, 32.0, 12.0),
    "upper_lid_left": (91.0, 32.0, 17.0),
    "lower_lid_left": (88.0, 32.0, 3.0),
    "lateral_canthus_left": (80.0, 46.0, 9.0),
    "brow_inner_left": (96.0, 15.0, 34.0),
    "brow_mid_left": (92.0, 30.0, 37.0),
    "brow_outer_left": (83.0, 44.0, 34.0),
    "glabella": (100.0, 0.0, 32.0),
    "forehead_centre": (95.0, 0.0, 60.0),
    "forehead_high": (78.0, 0.0, 100.0),
    "malar_left": (86.0, 42.0, -12.0),
    "zygoma_left": (72.0, 55.0, -2.0),
    "ala_left": (110.0, 17.0, -26.0),
    "upper_lip": (113.0, 0.0, -42.0),
    "stomion": (110.0, 0.0, -50.0),
    "lower_lip": (110.0, 0.0, -58.0),
    "lip_corner_left": (98.0, 25.0, -50.0),
    "buccinator_left": (82.0, 40.0, -46.0),
    "masseter_left": (42.0, 55.0, -40.0),
    "mentalis": (106.0, 0.0, -76.0),
    "pogonion": (105.0, 0.0, -86.0),
    "mandible_border_left": (72.0, 45.0, -86.0),
    "gonion_left": (8.0, 50.0, -70.0),
    "mastoid_left": (-12.0, 50.0, -30.0),
}

# Mandible (canonical face). The hinge axis runs through both condyles (y axis through
# condyle_left mirrored); opening rotates the ramus about +y_H (chin down and back).
CONDYLE_CENTRE_MM = np.array([12.0, 0.0, -5.0])
JAW_OPEN_DEG = 25.0                       # ramus rotation at jawOpen = 1
JAW_OPEN_TRANSLATION_MM = np.array([9.0, 0.0, -3.0])   # condylar glide at jawOpen = 1 (x w^2)
JAW_LATERAL_DEG = 5.0                     # rotation about z_H for jawLeft = 1 (chin to the left)
JAW_LATERAL_SHIFT_MM = 2.0                # Bennett side shift at jawLeft = 1
JAW_FORWARD_MM = np.array([8.0, 0.0, -2.0])            # protrusion at jawForward = 1
JAW_FORWARD_LIMIT_MM = 14.0               # soft limit of the total forward condylar travel

SOFT_LIMIT_MM = 18.0                      # soft-tissue displacement magnitude saturates near this


@dataclass(frozen=True)
class FaceShape:
    """Per-subject geometry relative to the canonical face."""

    scale: float = 1.0       # overall face size (~0.9..1.1): positions and displacements
    jaw_scale: float = 1.0   # mandible length factor: scales the jaw's lever arm and translation
    mobility: float = 1.0    # soft-tissue displacement factor (~0.8..1.2)

    @staticmethod
    def random(rng: np.random.Generator) -> FaceShape:
        scale = float(np.clip(rng.normal(1.0, 0.045), 0.9, 1.1))
        return FaceShape(scale=scale,
                         jaw_scale=float(np.clip(rng.normal(1.0, 0.04), 0.9, 1.1)),
                         mobility=float(np.clip(rng.normal(1.0, 0.1), 0.8, 1.2)))


# --- the soft-tissue bump table -------------------------------------------------------------------
# (shape, centre, support, peak displacement xyz mm). The support is a radius in mm, or
# (r_x, r_y, r_z_up, r_z_down) for an ellipsoidal one whose vertical reach differs above and below
# the centre (frontalis moves the forehead above the brows a lot and the nasion below them not at
# all). Entries of shapes ending in "Left" are mirrored for "Right". Magnitudes: docs/sim.md.

_Vec = tuple[float, float, float]


def _unit(v: _Vec, length: float) -> _Vec:
    a = np.asarray(v, dtype=float)
    a = a / np.linalg.norm(a) * length
    return (float(a[0]), float(a[1]), float(a[2]))


def _at(name: str, dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> _Vec:
    x, y, z = LANDMARKS_MM[name]
    return (x + dx, y + dy, z + dz)


# Zygomaticus major pulls the lip corner ~47 deg up and out in the frontal plane, and back along
# the cheek's curve: 9.3 mm (the published mean).
_SMILE_PEAK = _unit((-0.35, 0.68, 0.73), 9.3)
# Depressor anguli oris: from the corner towards its origin on the mandible's lower border.
_FROWN_PEAK = _unit((-0.21, 0.34, -0.92), 5.0)

_Bump = tuple[str, _Vec, "float | tuple[float, float, float, float]", _Vec]

_LEFT_BUMPS: list[_Bump] = [
    # eyelids (orbicularis oculi, palpebral part): the lid margin travels ~9 mm; periorbital skin a
    # little; no skin IMU sits on the lid itself.
    ("eyeBlinkLeft", _at("upper_lid_left"), 10.0, (0.0, 0.0, -9.1)),
    ("eyeBlinkLeft", _at("lower_lid_left"), 8.0, (0.0, 0.0, 1.5)),
    ("eyeBlinkLeft", (77.0, 50.0, 8.0), 14.0, (0.0, -0.6, -0.3)),
    # gaze: the eyeball turns; only lid-coupled skin moves (poorly observable, honestly so)
    ("eyeLookDownLeft", _at("upper_lid_left"), 10.0, (0.0, 0.0, -3.0)),
    ("eyeLookDownLeft", _at("lower_lid_left"), 8.0, (0.0, 0.0, -1.5)),
    ("eyeLookUpLeft", _at("upper_lid_left"), 10.0, (0.0, 0.0, 2.0)),
    ("eyeLookUpLeft", _at("lower_lid_left"), 8.0, (0.0, 0.0, 0.7)),
    ("eyeLookInLeft", _at("lateral_canthus_left", 4.0, -2.0), 10.0, (0.0, -0.5, 0.0)),
    ("eyeLookOutLeft", _at("lateral_canthus_left", 4.0, -2.0), 10.0, (0.0, 0.5, 0.0)),
    # AU7 lid tightener: lower lid up, upper lid down, lateral orbit skin pulled medially
    ("eyeSquintLeft", _at("lower_lid_left"), 12.0, (0.0, 0.0, 3.0)),
    ("eyeSquintLeft", _at("upper_lid_left"), 10.0, (0.0, 0.0, -2.0)),
    ("eyeSquintLeft", (77.0, 50.0, 8.0), 16.0, (0.3, -1.5, 0.3)),
    # AU5 upper lid raiser
    ("eyeWideLeft", _at("upper_lid_left"), 10.0, (0.0, 0.0, 3.0)),
    # zygomaticus major: the corner, the skin along the muscle, the cheek mass bulging up
    ("mouthSmileLeft", _at("lip_corner_left"), 22.0, _SMILE_PEAK),
    ("mouthSmileLeft", (86.0, 42.0, -32.0), 20.0, (-1.5, 2.0, 4.0)),
    ("mouthSmileLeft", (90.0, 38.0, -18.0), 20.0, (1.5, 0.5, 2.5)),
    # depressor anguli oris: the corner and the skin over the muscle's belly
    ("mouthFrownLeft", _at("lip_corner_left"), 20.0, _FROWN_PEAK),
    ("mouthFrownLeft", (91.0, 31.0, -68.0), 18.0, (-0.5, 0.8, -3.0)),
    # buccinator pulls the corner back; the cheek over it follows a little
    ("mouthDimpleLeft", _at("lip_corner_left"), 18.0, (-2.5, 3.0, 0.0)),
    ("mouthDimpleLeft", (84.0, 42.0, -46.0), 20.0, (-1.5, 1.0, 0.0)),
    # risorius (+ platysma): corner out and down, the lateral cheek with it
    ("mouthStretchLeft", _at("lip_corner_left"), 22.0, (-1.0, 5.0, -3.0)),
    ("mouthStretchLeft", (90.0, 36.0, -54.0), 18.0, (-1.0, 3.5, -1.5)),
    ("mouthPressLeft", _at("lip_corner_left", 2.0, -3.0), 12.0, (0.0, -1.0, 0.0)),
    ("mouthPressLeft", _at("upper_lip", -1.0, 10.0, -1.0), 10.0, (0.0, 0.0, -1.5)),
    ("mouthPressLeft", _at("lower_lip", -1.0, 10.0, 1.0), 10.0, (0.0, 0.0, 1.5)),
    # depressor labii inferioris: lower lip and the skin below it down
    ("mouthLowerDownLeft", _at("lower_lip", -2.0, 12.0), 16.0, (1.0, 0.5, -4.0)),
    ("mouthLowerDownLeft", (104.0, 14.0, -68.0), 16.0, (0.8, 0.3, -3.0)),
    # levator labii superioris: upper lip up, the skin along the muscle and the nasolabial fold
    ("mouthUpperUpLeft", _at("upper_lip", -2.0, 12.0), 16.0, (0.0, 0.5, 4.0)),
    ("mouthUpperUpLeft", (104.0, 20.0, -28.0), 18.0, (0.0, 0.3, 3.0)),
    ("mouthUpperUpLeft", (100.0, 28.0, -35.0), 12.0, (0.0, 0.0, 1.5)),
    # mouthLeft: both cheeks shift a little with the mouth (the central part is below)
    ("mouthLeft", (84.0, 42.0, -46.0), 22.0, (-0.5, 2.0, 0.0)),
    ("mouthLeft", (84.0, -42.0, -46.0), 22.0, (0.5, 2.0, 0.0)),
    # brows: corrugator/depressor supercilii down and medially; procerus the glabella; frontalis
    # lateral part up, over the lateral forehead
    ("browDownLeft", (97.0, 17.0, 38.0), (25.0, 20.0, 22.0, 12.0), (0.0, -3.0, -4.5)),
    ("browDownLeft", (100.0, 3.0, 37.0), 9.0, (0.0, -0.5, -1.5)),
    ("browOuterUpLeft", (84.0, 42.0, 37.0), (30.0, 22.0, 40.0, 12.0), (-1.0, 0.5, 9.5)),
    ("browOuterUpLeft", (84.0, 38.0, 56.0), (30.0, 26.0, 34.0, 24.0), (-1.0, 0.0, 4.5)),
    # orbicularis oculi, orbital part (AU6): malar skin up and medially, crow's feet medially
    ("cheekSquintLeft", _at("malar_left", 0.0, -2.0, 7.0), 25.0, (0.5, -1.0, 4.0)),
    ("cheekSquintLeft", (77.0, 50.0, 8.0), 18.0, (0.5, -2.5, 1.0)),
    # levator labii superioris alaeque nasi: ala and nose side up, upper lip a little
    ("noseSneerLeft", _at("ala_left", -2.0, 0.0, 1.0), 16.0, (0.0, 0.5, 3.5)),
    ("noseSneerLeft", (108.0, 13.0, -10.0), 14.0, (0.0, 0.3, 2.5)),
]

_CENTRAL_BUMPS: list[_Bump] = [
    # lips sealed with the jaw open: lower lip rides up, upper lip comes down
    ("mouthClose", _at("upper_lip"), 16.0, (0.0, 0.0, -4.0)),
    ("mouthClose", _at("lower_lip"), 16.0, (0.5, 0.0, 6.0)),
    # orbicularis oris: rounding and protrusion, corners move medially
    ("mouthFunnel", _at("upper_lip"), 20.0, (4.0, 0.0, 2.0)),
    ("mouthFunnel", _at("lower_lip"), 20.0, (4.0, 0.0, -2.0)),
    ("mouthFunnel", _at("lip_corner_left"), 12.0, (2.0, -4.0, 0.0)),
    ("mouthFunnel", _at("lip_corner_left", 0.0, -50.0), 12.0, (2.0, 4.0, 0.0)),
    ("mouthPucker", _at("stomion", 2.0), 18.0, (5.0, 0.0, 0.0)),
    ("mouthPucker", _at("lip_corner_left"), 14.0, (3.0, -6.0, 0.0)),
    ("mouthPucker", _at("lip_corner_left", 0.0, -50.0), 14.0, (3.0, 6.0, 0.0)),
    # the whole mouth slides sideways (mouthRight mirrors mouthLeft, with its cheek bumps above)
    ("mouthLeft", _at("stomion", -5.0), 32.0, (-1.0, 6.0, 0.0)),
    ("mouthRight", _at("stomion", -5.0), 32.0, (-1.0, -6.0, 0.0)),
    # lips roll in (AU28)
    ("mouthRollLower", _at("lower_lip"), 16.0, (-3.0, 0.0, 2.0)),
    ("mouthRollUpper", _at("upper_lip"), 16.0, (-3.0, 0.0, -2.0)),
    # mentalis pushes chin skin and the lower lip up
    ("mouthShrugLower", _at("mentalis", 0.0, 0.0, 1.0), 20.0, (2.0, 0.0, 4.0)),
    ("mouthShrugLower", _at("lower_lip"), 12.0, (2.0, 0.0, 2.0)),
    ("mouthShrugUpper", _at("upper_lip"), 14.0, (1.0, 0.0, 2.0)),
    # frontalis, medial part: both inner brows, and the forehead sheet above them; nothing reaches
    # the nasion below or the frontal bone near the hairline
    ("browInnerUp", (96.0, 16.0, 36.0), (30.0, 22.0, 40.0, 11.0), (-1.0, 0.0, 9.0)),
    ("browInnerUp", (96.0, -16.0, 36.0), (30.0, 22.0, 40.0, 11.0), (-1.0, 0.0, 9.0)),
    ("browInnerUp", (94.0, 0.0, 58.0), (30.0, 45.0, 36.0, 26.0), (-1.0, 0.0, 6.5)),
    # air pushes the cheeks out along their normals; lips protrude a little
    ("cheekPuff", _at("buccinator_left", 3.0, 0.0, 6.0), 25.0, (2.0, 5.0, 0.0)),
    ("cheekPuff", _at("buccinator_left", 3.0, -80.0, 6.0), 25.0, (2.0, -5.0, 0.0)),
    ("cheekPuff", _at("stomion"), 15.0, (2.0, 0.0, 0.0)),
    # the tongue pushes the lower lip out and down (the tongue itself carries no IMU)
    ("tongueOut", _at("lower_lip"), 14.0, (1.5, 0.0, -1.5)),
]


def _support(r: float | tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    return (r, r, r, r) if isinstance(r, (int, float)) else r


def _bump_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arrays (centre (K,3), support (K,4) = r_x, r_y, r_z_up, r_z_down, peak (K,3), shape index
    (K,)) of every bump."""
    rows: list[tuple[int, _Vec, tuple[float, float, float, float], _Vec]] = []
    for name, c, r, d in _LEFT_BUMPS:
        assert name.endswith("Left"), name
        right = "mouthRight" if name == "mouthLeft" else name[:-4] + "Right"
        rows.append((INDEX[name], c, _support(r), d))
        rows.append((INDEX[right], (c[0], -c[1], c[2]), _support(r), (d[0], -d[1], d[2])))
    for name, c, r, d in _CENTRAL_BUMPS:
        rows.append((INDEX[name], c, _support(r), d))
    centre = np.array([row[1] for row in rows], dtype=float)
    support = np.array([row[2] for row in rows], dtype=float)
    peak = np.array([row[3] for row in rows], dtype=float)
    index = np.array([row[0] for row in rows], dtype=int)
    return centre, support, peak, index


_JAW_SHAPES = ("jawOpen", "jawLeft", "jawRight", "jawForward")


def _smoothstep(t: np.ndarray) -> np.ndarray:
    """Quintic smoothstep, clamped: C2, exactly 0 below 0 and 1 above 1."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * t * (t * (6.0 * t - 15.0) + 10.0)


def mandible_membership(p_mm: np.ndarray) -> np.ndarray:
    """How much the skin at canonical positions (..., 3) follows the mandible, in [0, 1].

    1 on the chin and lower lip and over the mandible's lower border; ~0.3-0.4 over the cheek between
    the jaws (buccinator, masseter), where the skin stretches between maxilla and mandible; 0 above
    the mouth corners' level, on the upper lip and behind the ramus (ear, mastoid)."""
    x, y, z = p_mm[..., 0], p_mm[..., 1], p_mm[..., 2]
    lateral = _smoothstep((np.abs(y) - 20.0) / 18.0)        # 0 within the lips, 1 beyond the corners
    z_level = -50.0 + 0.25 * (100.0 - x)                     # occlusal level, rising towards the ramus
    half = 3.0 + 7.0 * lateral                               # sharp at the lips, broad on the cheek
    upper = _smoothstep((z_level + 4.0 * lateral + half - z) / (2.0 * half))
    over_bone = _smoothstep((z_level - 4.0 - z) / 30.0)      # skin over the mandible's body
    cap = 1.0 - 0.6 * lateral
    behind = _smoothstep(x / 25.0)                           # fades out over the ramus
    return upper * (cap + (1.0 - cap) * over_bone) * behind


def skin_continuity(p_mm: np.ndarray) -> np.ndarray:
    """0 between the lips (the mouth opening separates upper and lower tissue: no shear there), 1 on
    continuous skin lateral of the mouth corners, where the membership's gradient is a real shear."""
    return _smoothstep((np.abs(p_mm[..., 1]) - 20.0) / 18.0)


def _soft_limit(v: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Saturate vectors v (..., 3) by magnitude: v * f(|v|), f = (1 + (|v|/L)^4)^(-1/4).
    Returns (saturated, Jacobian (..., 3, 3))."""
    s2 = np.einsum("...i,...i->...", v, v)
    u = (s2 / limit**2) ** 2
    f = (1.0 + u) ** -0.25
    g = -(s2 / limit**4) * (1.0 + u) ** -1.25                # f'(s) / s
    jac = f[..., None, None] * np.eye(3) + g[..., None, None] * v[..., :, None] * v[..., None, :]
    return v * f[..., None], jac


def _axial(g: np.ndarray) -> np.ndarray:
    """Axial vector of the antisymmetric part of (..., 3, 3)."""
    return 0.5 * np.stack([g[..., 2, 1] - g[..., 1, 2], g[..., 0, 2] - g[..., 2, 0],
                           g[..., 1, 0] - g[..., 0, 1]], axis=-1)


def _surface_rotation(grad: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Rotation vector of a skin patch from the displacement gradient grad (..., 3, 3) =
    d(displacement_i)/d(position_j), using derivatives along the skin only: the tangent-plane
    gradient plus the tilt of the normal from the normal displacement's surface gradient. Exact for
    a rigid rotation; its antisymmetric part is 0.5 * curl for small deformations."""
    n = normal
    proj = np.eye(3) - n[..., :, None] * n[..., None, :]
    g_t = grad @ proj
    tilt = -np.einsum("...ij,...j->...i", proj, np.einsum("...ji,...j->...i", grad, n))   # dn = -P grad^T n
    return _axial(g_t + tilt[..., :, None] * n[..., None, :])


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 3, 3) matrices."""
    flat = np.asarray(rotvec, dtype=float).reshape(-1, 3)
    return Rotation.from_rotvec(flat).as_matrix().reshape(*np.shape(rotvec)[:-1], 3, 3)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


class FaceModel:
    """Site motion for one subject's face (see the module docstring for the physics)."""

    CHUNK = 8192      # frames per vectorised block (bounds memory for long takes)

    def __init__(self, shape: FaceShape = FaceShape()) -> None:
        self.shape = shape
        self._centre, self._support, self._peak, index = _bump_table()
        self._onehot = np.zeros((index.size, N_BLENDSHAPES))   # bump -> its blendshape
        self._onehot[np.arange(index.size), index] = 1.0
        self._jaw = np.array([INDEX[n] for n in _JAW_SHAPES])

    # ------------------------------------------------------------------ geometry
    def rest_position_mm(self, position_mm: np.ndarray) -> np.ndarray:
        """Canonical-face positions (..., 3) -> this subject's rest positions."""
        return np.asarray(position_mm, dtype=float) * self.shape.scale

    def soft_fields(self, position_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-shape soft-tissue displacement (n, 52, 3) mm at weight 1 before saturation, and its
        gradient (n, 52, 3, 3) d(disp_i)/d(pos_j), on the canonical face (analytic)."""
        p = np.asarray(position_mm, dtype=float).reshape(-1, 3)
        rel = p[:, None, :] - self._centre[None, :, :]                  # (n, K, 3)
        sup = self._support
        radius = np.stack([np.broadcast_to(sup[:, 0], rel.shape[:2]), np.broadcast_to(sup[:, 1], rel.shape[:2]),
                           np.where(rel[..., 2] >= 0.0, sup[None, :, 2], sup[None, :, 3])], axis=-1)
        q = np.sum((rel / radius) ** 2, axis=-1)                         # (n, K)
        base = np.where(q < 1.0, 1.0 - q, 0.0)
        kern = base**3                                                   # (n, K)
        dkern = -6.0 * (base**2)[..., None] * rel / radius**2            # (n, K, 3)
        disp_k = kern[:, :, None] * self._peak[None]                     # (n, K, 3)
        grad_k = self._peak[None, :, :, None] * dkern[:, :, None, :]     # (n, K, 3, 3)
        fields = np.einsum("km,nki->nmi", self._onehot, disp_k)
        grads = np.einsum("km,nkij->nmij", self._onehot, grad_k)
        return fields, grads

    # ------------------------------------------------------------------ motion
    def site_motion(self, weights: np.ndarray, position_mm: np.ndarray,
                    normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(displacement_mm (T, n, 3), rotvec_rad (T, n, 3)) of the skin at each site, in H,
        relative to the neutral face (the rest position is `rest_position_mm(position_mm)`).
        weights (T, 52) in [0, 1]; position_mm (n, 3) on the canonical face; normal (n, 3) outward
        unit skin normals. Sites on bone get zeros because every field vanishes there."""
        w = np.asarray(weights, dtype=float)
        if w.ndim != 2 or w.shape[1] != N_BLENDSHAPES:
            raise ValueError(f"weights must be (T, {N_BLENDSHAPES}), got {w.shape}")
        p = np.asarray(position_mm, dtype=float).reshape(-1, 3)
        nrm = np.asarray(normal, dtype=float).reshape(-1, 3)
        nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
        fields, grads = self.soft_fields(p)
        member, member_grad = self._membership(p)
        member_grad = member_grad * skin_continuity(p)[:, None]
        T, n = w.shape[0], p.shape[0]
        disp = np.empty((T, n, 3))
        rot = np.empty((T, n, 3))
        for start in range(0, T, self.CHUNK):
            sl = slice(start, min(T, start + self.CHUNK))
            disp[sl], rot[sl] = self._motion_block(w[sl], p, nrm, fields, grads, member, member_grad)
        return disp, rot

    def _membership(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mandible membership (n,) and its gradient (n, 3) per canonical mm (central differences)."""
        h = 0.25
        m = mandible_membership(p)
        grad = np.empty_like(p)
        for j in range(3):
            e = np.zeros(3)
            e[j] = h
            grad[:, j] = (mandible_membership(p + e) - mandible_membership(p - e)) / (2 * h)
        return m, grad

    def jaw_pose(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rigid mandible motion for weights (T, 52): (R_head_mandible (T, 3, 3), translation_mm
        (T, 3)) about the condyle centre on the canonical face (before jaw_scale and scale)."""
        w = np.clip(np.asarray(weights, dtype=float), 0.0, 1.0)
        w_open, w_left, w_right, w_fwd = (w[:, self._jaw[k]] for k in range(4))
        lateral = w_left - w_right
        rot = _rot_z(np.radians(JAW_LATERAL_DEG) * lateral) @ _rot_y(np.radians(JAW_OPEN_DEG) * w_open)
        trans = (JAW_OPEN_TRANSLATION_MM[None] * (w_open**2)[:, None] + JAW_FORWARD_MM[None] * w_fwd[:, None]
                 + np.array([0.0, JAW_LATERAL_SHIFT_MM, 0.0])[None] * lateral[:, None])
        fwd = trans[:, 0]
        trans[:, 0] = fwd / (1.0 + (fwd / JAW_FORWARD_LIMIT_MM) ** 4) ** 0.25
        return rot, trans

    def _motion_block(self, w: np.ndarray, p: np.ndarray, nrm: np.ndarray, fields: np.ndarray,
                      grads: np.ndarray, member: np.ndarray,
                      member_grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.shape
        # soft tissue, canonical mm: linear sum, then magnitude saturation (chain rule for the gradient)
        lin = np.einsum("tk,nki->tni", w, fields)
        lin_grad = np.einsum("tk,nkij->tnij", w, grads)
        soft, sat_jac = _soft_limit(lin, SOFT_LIMIT_MM)
        soft_grad = sat_jac @ lin_grad
        disp = soft * (s.scale * s.mobility)
        # gradient w.r.t. the subject's positions: (scale * mobility) / scale
        rot = _surface_rotation(soft_grad * s.mobility, nrm[None])
        # mandible: rigid motion about the subject's condyle centre, weighted by membership
        R, trans = self.jaw_pose(w)
        rest = p * s.scale
        centre = CONDYLE_CENTRE_MM * s.scale
        arm = rest - centre                                                  # (n, 3)
        u = s.jaw_scale * (np.einsum("tij,nj->tni", R, arm) - arm[None]) + (s.scale * s.jaw_scale) * trans[:, None]
        disp += member[None, :, None] * u
        jaw_rotvec = Rotation.from_matrix(R).as_rotvec()                    # (T, 3)
        rot += member[None, :, None] * jaw_rotvec[:, None, :]
        # skin between bone-carried and still tissue shears: the u (grad m)^T part of grad(m u)
        g_m = member_grad / s.scale
        rot += _surface_rotation(u[..., :, None] * g_m[None, :, None, :], nrm[None])
        return disp, rot

    def sensitivity(self, position_mm: np.ndarray, normal: np.ndarray, *, at: float = 0.5,
                    step: float = 0.05) -> np.ndarray:
        """(n, 6, 52): d(displacement mm (3), rotation rad (3)) / d(weight), each shape linearised
        alone at weight `at` by central differences (so the jaw's nonlinearity and the saturation
        count): the observability model of the placement optimiser."""
        k = N_BLENDSHAPES
        w = np.zeros((2 * k, k))
        idx = np.arange(k)
        w[idx, idx] = at + step
        w[k + idx, idx] = at - step
        disp, rot = self.site_motion(w, position_mm, normal)
        motion = np.concatenate([disp, rot], axis=2)                        # (2k, n, 6)
        deriv = (motion[:k] - motion[k:]) / (2.0 * step)                    # (k, n, 6)
        return np.transpose(deriv, (1, 2, 0))


# --------------------------------------------------------------------------- sensor pose helpers
def nominal_mount_frame(normal: np.ndarray) -> np.ndarray:
    """R_head_skin at rest for outward normals (..., 3): columns x = "up along the skin" (+z_H
    projected on the skin plane; +x_H projected when the normal is near vertical), y = z cross x,
    z = the normal."""
    n = np.asarray(normal, dtype=float)
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    up = np.broadcast_to(np.array([0.0, 0.0, 1.0]), n.shape)
    fwd = np.broadcast_to(np.array([1.0, 0.0, 0.0]), n.shape)
    near_vertical = (np.abs(n[..., 2]) > 0.9)[..., None]
    ref = np.where(near_vertical, fwd, up)
    x = ref - np.sum(ref * n, axis=-1, keepdims=True) * n
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(n, x)
    return np.stack([x, y, n], axis=-1)


def site_world_pose(R_world_head: np.ndarray, p_head_m: np.ndarray, rest_mm: np.ndarray,
                    displacement_mm: np.ndarray, rotvec_rad: np.ndarray, R_head_skin0: np.ndarray,
                    R_skin_sensor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World pose of one sensor over time: (R_world_sensor (T, 3, 3), p_world_m (T, 3)).

    R_world_head (T, 3, 3), p_head_m (T, 3): head motion; rest_mm (3,) the site's rest position on
    this face; displacement_mm, rotvec_rad (T, 3): `FaceModel.site_motion` for the site;
    R_head_skin0 (3, 3): `nominal_mount_frame(normal)`; R_skin_sensor (3, 3): mounting
    misalignment (identity if None)."""
    R_head_skin = rotvec_to_matrix(rotvec_rad) @ R_head_skin0
    if R_skin_sensor is not None:
        R_head_skin = R_head_skin @ R_skin_sensor
    R_world_sensor = R_world_head @ R_head_skin
    local_m = (np.asarray(rest_mm, dtype=float)[None] + displacement_mm) / 1000.0
    p = p_head_m + np.einsum("tij,tj->ti", R_world_head, local_m)
    return R_world_sensor, p


assert len(BLENDSHAPES) == N_BLENDSHAPES
