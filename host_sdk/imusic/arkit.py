"""The 52 ARKit blendshapes: names, Apple's order, spellings and face regions.

The one place these are defined: the simulator, the Live Link Face CSV, the outputs and the model
metadata all take names and order from here. Order and names follow Apple's ARFaceAnchor
documentation (the order of Unreal's ``EARFaceBlendShape`` and of Live Link Face packets).
"Left" is the subject's left.
"""

from __future__ import annotations

__all__ = ["BLENDSHAPES", "N_BLENDSHAPES", "INDEX", "REGIONS", "REGION_OF", "pascal_case", "from_pascal_case",
           "LIVE_LINK_EXTRA"]

BLENDSHAPES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
N_BLENDSHAPES = len(BLENDSHAPES)
INDEX: dict[str, int] = {name: i for i, name in enumerate(BLENDSHAPES)}

# The nine values Live Link Face sends after the 52 shapes (radians-like, -1..1 in the app's export).
LIVE_LINK_EXTRA: tuple[str, ...] = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch",
                                    "LeftEyeRoll", "RightEyeYaw", "RightEyePitch", "RightEyeRoll")

# Face regions for per-region error reports (every shape in exactly one region).
REGIONS: dict[str, tuple[str, ...]] = {
    "brows": ("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight"),
    "eyes": tuple(n for n in BLENDSHAPES if n.startswith("eye")),
    "cheeks": ("cheekPuff", "cheekSquintLeft", "cheekSquintRight"),
    "nose": ("noseSneerLeft", "noseSneerRight"),
    "jaw": ("jawForward", "jawLeft", "jawRight", "jawOpen"),
    "mouth": tuple(n for n in BLENDSHAPES if n.startswith("mouth")) + ("tongueOut",),
}
REGION_OF: dict[str, str] = {name: region for region, names in REGIONS.items() for name in names}


def pascal_case(name: str) -> str:
    """``eyeBlinkLeft`` -> ``EyeBlinkLeft`` (Unreal, Live Link, VMC spelling)."""
    return name[:1].upper() + name[1:]


def from_pascal_case(name: str) -> str:
    """``EyeBlinkLeft`` -> ``eyeBlinkLeft``; KeyError for a name that is not a blendshape."""
    camel = name[:1].lower() + name[1:]
    if camel not in INDEX:
        raise KeyError(name)
    return camel
