"""Expression generator: 60 Hz sequences of the 52 ARKit blendshapes with realistic timing and
co-activation, deterministic per seed, with a per-subject style.

Components (each a (T, 52) layer; layers add, then everything is clipped to [0, 1]):

* speech: syllables at the style's rate (3-7 Hz, jittered) in intonation phrases of 1-5 s with
  pauses, stress modulation at 1-2 Hz. Each syllable is a consonant gesture then a vowel gesture,
  viseme-like co-activations of jawOpen, mouthClose, funnel, pucker, stretch, roll, lowerDown,
  upperUp, press; pulses are raised-cosine shaped, so the jaw's spectrum peaks at the syllable rate.
* blinks: a renewal process at the style's rate (15-26 per minute), closing 60-110 ms, lid down
  0-60 ms, reopening 110-220 ms (closing faster than opening); both eyes nearly together (the right
  lags 0-10 ms), with eyeSquint and cheekSquint coupling.
* emotions: episodes of joy, surprise, anger, sadness, disgust, fear and (one-sided) contempt with
  minimum-jerk onset (0.3-1 s), apex (1-4 s) and offset (0.5-1.5 s).
* gaze: fixations of 0.3-3 s joined by ~50 ms saccades, mapped to the eyeLook shapes.
* idle: slow small wandering of a few shapes (0.05-0.5 Hz) above the style's resting tension.
* asymmetry: every Left/Right shape of the speech, emotion and idle layers is multiplied by the
  style's side gains.

Programs: "mixed" (talk turns about half the time, emotions, blinks, gaze, idle), "speech",
"emotions", "blinks" (blinks only) and "neutral" (exactly zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imusic.arkit import BLENDSHAPES, INDEX, N_BLENDSHAPES

__all__ = ["ExpressionStyle", "generate_blendshapes", "PROGRAMS", "EMOTIONS"]

PROGRAMS = ("mixed", "neutral", "speech", "emotions", "blinks")

_LEFT = np.array([i for i, n in enumerate(BLENDSHAPES) if n.endswith("Left")])
_RIGHT = np.array([INDEX[BLENDSHAPES[i][:-4] + "Right"] for i in _LEFT])


@dataclass(frozen=True)
class ExpressionStyle:
    """How one subject moves their face."""

    expressiveness: float = 1.0        # gain on speech and emotion amplitudes (~0.6..1.4)
    asymmetry: float = 0.1             # left gain 1 + a/2, right gain 1 - a/2 (signed, ~-0.3..0.3)
    blink_rate_per_min: float = 17.0   # ~15..26 (rest 17, conversation 26)
    speech_rate_hz: float = 4.5        # syllables per second (~3.5..6)
    smile_bias: float = 0.1            # share of emotions that are joy beyond the base, + resting smile
    idle_tension: float = 0.03         # resting activation of a few shapes
    jaw_speech: float = 0.28           # typical jawOpen peak on a stressed open syllable

    @staticmethod
    def random(rng: np.random.Generator) -> ExpressionStyle:
        return ExpressionStyle(
            expressiveness=float(rng.uniform(0.7, 1.3)),
            asymmetry=float(rng.uniform(-0.3, 0.3)),
            blink_rate_per_min=float(rng.uniform(15.0, 26.0)),
            speech_rate_hz=float(rng.uniform(3.5, 6.0)),
            smile_bias=float(rng.uniform(0.0, 0.3)),
            idle_tension=float(rng.uniform(0.0, 0.06)),
            jaw_speech=float(rng.uniform(0.2, 0.36)))

    def side_gains(self) -> tuple[float, float]:
        return 1.0 + 0.5 * self.asymmetry, 1.0 - 0.5 * self.asymmetry


def _pattern(**weights: float) -> np.ndarray:
    """A (52,) activation pattern; a name ending in "_" sets both sides (mouthSmile_ -> L and R)."""
    v = np.zeros(N_BLENDSHAPES)
    for key, value in weights.items():
        if key.endswith("_"):
            v[INDEX[key[:-1] + "Left"]] = value
            v[INDEX[key[:-1] + "Right"]] = value
        else:
            v[INDEX[key]] = value
    return v


# Vowel and consonant gestures (relative amplitudes; the jaw scale comes from the style).
_VOWELS = np.stack([
    _pattern(jawOpen=1.0, mouthLowerDown_=0.3, mouthUpperUp_=0.1, mouthStretch_=0.1),          # a
    _pattern(jawOpen=0.55, mouthStretch_=0.35, mouthSmile_=0.15, mouthUpperUp_=0.15, mouthDimple_=0.1),  # e, i
    _pattern(jawOpen=0.7, mouthFunnel=0.5, mouthPucker=0.2),                                    # o
    _pattern(jawOpen=0.3, mouthPucker=0.6, mouthFunnel=0.3),                                    # u
])
_VOWEL_P = np.array([0.35, 0.3, 0.2, 0.15])
_CONSONANTS = np.stack([
    # the jaw rises between vowels: consonants carry little jawOpen of their own
    _pattern(mouthClose=0.35, mouthPress_=0.3),                                                 # m b p
    _pattern(jawOpen=0.05, mouthRollLower=0.45, mouthUpperUp_=0.2),                             # f v
    _pattern(jawOpen=0.05, mouthStretch_=0.2, mouthShrugUpper=0.1),                             # s t d n
    _pattern(jawOpen=0.08, mouthFunnel=0.25, mouthRollUpper=0.1),                               # sh ch r
    _pattern(jawOpen=0.12),                                                                     # k g h
])
_CONSONANT_P = np.array([0.22, 0.13, 0.35, 0.12, 0.18])

EMOTIONS: dict[str, np.ndarray] = {
    "joy": _pattern(mouthSmile_=0.8, cheekSquint_=0.5, eyeSquint_=0.3, mouthUpperUp_=0.1, mouthDimple_=0.2,
                    jawOpen=0.08),
    "surprise": _pattern(browInnerUp=0.8, browOuterUp_=0.8, eyeWide_=0.6, jawOpen=0.35, mouthFunnel=0.1),
    "anger": _pattern(browDown_=0.8, noseSneer_=0.3, mouthPress_=0.5, eyeSquint_=0.3, mouthRollLower=0.1,
                      jawForward=0.1),
    "sadness": _pattern(browInnerUp=0.7, mouthFrown_=0.6, mouthShrugLower=0.35, browDown_=0.15,
                        eyeLookDown_=0.25, mouthPress_=0.1),
    "disgust": _pattern(noseSneer_=0.7, mouthUpperUp_=0.5, browDown_=0.4, cheekSquint_=0.3, mouthShrugUpper=0.2,
                        mouthFrown_=0.2),
    "fear": _pattern(browInnerUp=0.7, browOuterUp_=0.4, eyeWide_=0.7, mouthStretch_=0.5, jawOpen=0.15),
    "contempt": _pattern(mouthSmileLeft=0.4, mouthDimpleLeft=0.5, mouthPressLeft=0.15, eyeSquintLeft=0.1),
}
_EMOTION_P = {"joy": 0.3, "surprise": 0.14, "anger": 0.12, "sadness": 0.12, "disgust": 0.1, "fear": 0.08,
              "contempt": 0.08}
_MIRROR = np.arange(N_BLENDSHAPES)
_MIRROR[_LEFT], _MIRROR[_RIGHT] = _RIGHT, _LEFT

_IDLE = _pattern(browInnerUp=1.0, browDown_=0.6, mouthClose=0.5, mouthPress_=0.8, jawOpen=0.6, cheekSquint_=0.5,
                 mouthShrugLower=0.6, mouthSmile_=0.4, eyeSquint_=0.5, mouthRollLower=0.3)

# Gaze: degrees of eye rotation for a look shape at 1.
_GAZE_FULL_H_DEG = 30.0
_GAZE_FULL_V_DEG = 25.0


def _min_jerk(tau: np.ndarray) -> np.ndarray:
    tau = np.clip(tau, 0.0, 1.0)
    return tau**3 * (10 - 15 * tau + 6 * tau**2)


def _hann_kernel(width_s: float, rate_hz: float) -> np.ndarray:
    n = max(3, int(round(width_s * rate_hz)) | 1)
    return np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2


def _impulses(T: int, times_s: np.ndarray, amps: np.ndarray, rate_hz: float) -> np.ndarray:
    """(T, K) impulse trains: amps (m, K) placed at times (m,), split linearly between samples."""
    x = np.zeros((T + 1, amps.shape[1]))
    pos = times_s * rate_hz
    i0 = np.floor(pos).astype(int)
    frac = (pos - i0)[:, None]
    ok = (i0 >= 0) & (i0 < T)
    np.add.at(x, i0[ok], amps[ok] * (1 - frac[ok]))
    np.add.at(x, i0[ok] + 1, amps[ok] * frac[ok])
    return x[:T]


def _convolve_columns(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Centred convolution of each column of (T, K) with a kernel (FFT)."""
    from scipy.signal import fftconvolve

    y = fftconvolve(x, kernel[:, None], mode="full", axes=0)
    start = len(kernel) // 2
    return y[start:start + x.shape[0]]


def _speech_intervals(rng: np.random.Generator, duration_s: float, talk_share: float) -> list[tuple[float, float]]:
    """(start, end) of intonation phrases. talk_share ~1: one long talk; ~0.5: talk turns with
    listening in between."""
    out: list[tuple[float, float]] = []
    t = float(rng.uniform(0.3, 1.5))
    while t < duration_s:
        if talk_share < 0.99:
            turn_end = t + rng.uniform(4.0, 15.0)                 # a talk turn of several phrases
        else:
            turn_end = duration_s
        while t < min(turn_end, duration_s):
            length = float(rng.uniform(1.0, 5.0))
            out.append((t, min(t + length, duration_s)))
            t += length + float(rng.uniform(0.25, 1.2))          # pause between phrases
        if talk_share < 0.99:
            t += rng.uniform(4.0, 15.0) * (1 - talk_share) / max(talk_share, 0.05)   # listening
    return out


def _speech(T: int, rate_hz: float, rng: np.random.Generator, style: ExpressionStyle,
            talk_share: float) -> np.ndarray:
    duration_s = T / rate_hz
    period = 1.0 / style.speech_rate_hz
    syl_t: list[np.ndarray] = []
    for start, end in _speech_intervals(rng, duration_s, talk_share):
        gaps = rng.gamma(16.0, period / 16.0, int((end - start) / period * 1.5) + 4)
        times = start + np.cumsum(gaps) - gaps[0] + 0.5 * period
        syl_t.append(times[times < end - 0.5 * period])
    times = np.concatenate(syl_t) if syl_t else np.zeros(0)
    m = times.size
    if m == 0:
        return np.zeros((T, N_BLENDSHAPES))
    # stress at 1-2 Hz: a slow modulation of syllable strength, and lognormal variation per syllable
    stress_hz = rng.uniform(1.0, 2.0)
    stress = 0.75 + 0.25 * np.sin(2 * np.pi * stress_hz * times + rng.uniform(0, 2 * np.pi))
    strength = style.jaw_speech * style.expressiveness * stress * rng.lognormal(0.0, 0.25, m)
    vowels = _VOWELS[rng.choice(len(_VOWELS), m, p=_VOWEL_P)] * strength[:, None]
    has_cons = rng.random(m) < 0.75
    cons = _CONSONANTS[rng.choice(len(_CONSONANTS), m, p=_CONSONANT_P)] * strength[:, None] * has_cons[:, None]
    # the jaw carries the style's scale; lip shapes are scaled so they end up near 0.1-0.5
    lip_gain = np.ones(N_BLENDSHAPES) * 1.6
    lip_gain[INDEX["jawOpen"]] = 1.0
    x = (_impulses(T, times, vowels * lip_gain, rate_hz)
         + _impulses(T, times - 0.4 * period, cons * lip_gain, rate_hz))
    return _convolve_columns(x, _hann_kernel(0.8 * period, rate_hz))


def _blinks(T: int, rate_hz: float, rng: np.random.Generator, style: ExpressionStyle) -> np.ndarray:
    """Blink layer: eyelids plus squint coupling."""
    duration_s = T / rate_hz
    mean_gap = 60.0 / style.blink_rate_per_min
    n_max = int(duration_s / mean_gap * 2) + 5
    gaps = 0.25 + rng.gamma(3.0, (mean_gap - 0.25) / 3.0, n_max)
    starts = rng.uniform(0, mean_gap) + np.cumsum(gaps) - gaps[0]
    starts = starts[starts < duration_s]
    out = np.zeros((T, N_BLENDSHAPES))
    t = np.arange(T) / rate_hz
    lid = np.zeros((T, 2))
    for s in starts:
        close = rng.uniform(0.06, 0.11)
        hold = rng.uniform(0.0, 0.06)
        reopen = rng.uniform(0.11, 0.22)
        amp = min(1.0, rng.uniform(0.85, 1.05))
        for eye, lag in ((0, 0.0), (1, rng.uniform(0.0, 0.01))):
            a = s + lag
            i0, i1 = np.searchsorted(t, [a, a + close + hold + reopen])
            tt = t[i0:i1] - a
            closing = _min_jerk(tt / close)
            opening = 1.0 - _min_jerk((tt - close - hold) / reopen)
            shape = np.where(tt < close + hold, closing, opening)
            gain = amp * (1.0 if eye == 0 else rng.uniform(0.95, 1.0))
            lid[i0:i1, eye] = np.maximum(lid[i0:i1, eye], gain * shape)
    out[:, INDEX["eyeBlinkLeft"]] = lid[:, 0]
    out[:, INDEX["eyeBlinkRight"]] = lid[:, 1]
    out[:, INDEX["eyeSquintLeft"]] = 0.15 * lid[:, 0]
    out[:, INDEX["eyeSquintRight"]] = 0.15 * lid[:, 1]
    out[:, INDEX["cheekSquintLeft"]] = 0.05 * lid[:, 0]
    out[:, INDEX["cheekSquintRight"]] = 0.05 * lid[:, 1]
    return out


def _emotions(T: int, rate_hz: float, rng: np.random.Generator, style: ExpressionStyle,
              mean_gap_s: float) -> np.ndarray:
    duration_s = T / rate_hz
    t = np.arange(T) / rate_hz
    out = np.zeros((T, N_BLENDSHAPES))
    names = list(_EMOTION_P)
    p = np.array([_EMOTION_P[n] for n in names])
    p[names.index("joy")] += style.smile_bias
    p /= p.sum()
    start = float(rng.uniform(0.5, mean_gap_s))
    while start < duration_s:
        name = names[int(rng.choice(len(names), p=p))]
        onset, apex, offset = rng.uniform(0.3, 1.0), rng.uniform(1.0, 4.0), rng.uniform(0.5, 1.5)
        intensity = float(np.clip(rng.uniform(0.3, 1.0) * style.expressiveness, 0.0, 1.2))
        pattern = EMOTIONS[name]
        if name == "contempt" and rng.random() < 0.5:
            pattern = pattern[_MIRROR]
        end = start + onset + apex + offset
        i0, i1 = np.searchsorted(t, [start, end])
        tt = t[i0:i1] - start
        env = _min_jerk(tt / onset) - _min_jerk((tt - onset - apex) / offset)
        wobble = 1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * tt + rng.uniform(0, 2 * np.pi))
        out[i0:i1] += (intensity * env * wobble)[:, None] * pattern[None]
        start = end + float(rng.exponential(mean_gap_s))
    return out


def _band_noise(T: int, rate_hz: float, rng: np.random.Generator, k: int, lo_hz: float, hi_hz: float,
                n: int = 6) -> np.ndarray:
    """(T, k) smooth random signals in [-1, 1]-ish (sums of sinusoids, RMS ~0.35)."""
    t = np.arange(T) / rate_hz
    hz = rng.uniform(lo_hz, hi_hz, (n, k))
    ph = rng.uniform(0, 2 * np.pi, (n, k))
    out = np.zeros((T, k))
    for i in range(n):                                 # a loop over sinusoids, not over time
        out += np.sin(2 * np.pi * t[:, None] * hz[i] + ph[i])
    return out / n


def _idle(T: int, rate_hz: float, rng: np.random.Generator, style: ExpressionStyle) -> np.ndarray:
    wander = 0.5 + 0.5 * _band_noise(T, rate_hz, rng, N_BLENDSHAPES, 0.05, 0.5)
    base = style.idle_tension + 0.03 * wander
    out = base * _IDLE[None]
    out[:, INDEX["mouthSmileLeft"]] += 0.5 * style.smile_bias * _IDLE[INDEX["mouthSmileLeft"]]
    out[:, INDEX["mouthSmileRight"]] += 0.5 * style.smile_bias * _IDLE[INDEX["mouthSmileRight"]]
    return out


def _gaze(T: int, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Fixations joined by saccades -> eyeLook shapes (both eyes together, no vergence)."""
    duration_s = T / rate_hz
    t = np.arange(T) / rate_hz
    n = int(duration_s / 0.3) + 2
    fix = rng.uniform(0.3, 3.0, n)
    starts = np.cumsum(fix) - fix[0]
    starts = starts[starts < duration_s]
    yaw = np.clip(rng.normal(0, 10, starts.size), -25, 25)        # deg, + = to the subject's left
    pitch = np.clip(rng.normal(-3, 6, starts.size), -20, 15)       # deg, + = up
    idx = np.searchsorted(starts, t, side="right") - 1
    prev = np.maximum(idx - 1, 0)
    tau = (t - starts[idx]) / 0.05                                 # 50 ms saccades
    s = _min_jerk(tau)
    g_yaw = yaw[prev] + (yaw[idx] - yaw[prev]) * s
    g_pitch = pitch[prev] + (pitch[idx] - pitch[prev]) * s
    out = np.zeros((T, N_BLENDSHAPES))
    left_look = np.clip(g_yaw / _GAZE_FULL_H_DEG, 0, 1)
    right_look = np.clip(-g_yaw / _GAZE_FULL_H_DEG, 0, 1)
    out[:, INDEX["eyeLookOutLeft"]] = left_look
    out[:, INDEX["eyeLookInRight"]] = left_look
    out[:, INDEX["eyeLookInLeft"]] = right_look
    out[:, INDEX["eyeLookOutRight"]] = right_look
    for side in ("Left", "Right"):
        out[:, INDEX["eyeLookUp" + side]] = np.clip(g_pitch / _GAZE_FULL_V_DEG, 0, 1)
        out[:, INDEX["eyeLookDown" + side]] = np.clip(-g_pitch / _GAZE_FULL_V_DEG, 0, 1)
    return out


def generate_blendshapes(duration_s: float, *, rate_hz: float = 60.0, seed: int = 0,
                         style: ExpressionStyle | None = None, program: str = "mixed") -> np.ndarray:
    """(T, 52) float32 in [0, 1], T = round(duration_s * rate_hz), Apple's order (imusic.arkit).

    programs: "mixed" (talk turns, emotions, blinks, gaze, idle), "speech" (continuous talk with
    pauses, blinks, gaze, idle), "emotions" (emotion episodes, blinks, gaze, idle), "blinks" (blinks
    only), "neutral" (all exactly 0)."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown expression program {program!r}; one of {', '.join(PROGRAMS)}")
    T = int(round(duration_s * rate_hz))
    style = style or ExpressionStyle()
    if program == "neutral" or T == 0:
        return np.zeros((T, N_BLENDSHAPES), dtype=np.float32)
    # one independent stream per layer, so adding a layer does not reshuffle the others
    streams = [np.random.default_rng([seed, PROGRAMS.index(program), k]) for k in range(5)]
    out = _blinks(T, rate_hz, streams[0], style)
    if program != "blinks":
        sided = _idle(T, rate_hz, streams[1], style)
        if program in ("mixed", "speech"):
            sided += _speech(T, rate_hz, streams[2], style, 1.0 if program == "speech" else 0.5)
        if program in ("mixed", "emotions"):
            sided += _emotions(T, rate_hz, streams[3], style, 10.0 if program == "mixed" else 3.0)
        left, right = style.side_gains()
        sided[:, _LEFT] *= left
        sided[:, _RIGHT] *= right
        out += sided + _gaze(T, rate_hz, streams[4])
    return np.clip(out, 0.0, 1.0).astype(np.float32)
