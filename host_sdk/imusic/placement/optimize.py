"""Which face sites see the 52 blendshapes best: greedy D-optimal selection over the catalogue.

The model is linear. At a site, the simulator's face model gives the sensitivity J (6 x 52): skin
displacement (mm, 3) and rotation (rad, 3) per unit blendshape weight, linearised at a typical
activation (`FaceModel.sensitivity`). An IMU at the site resolves displacement and rotation to a
noise-equivalent `sigma` (`NoiseModel`), so the site adds J^T W J to the Fisher information about
the 52 weights, W = diag(1 / sigma^2). Summed over the chosen sites, plus a prior of one full weight
unit (the weights live in 0..1), the information matrix I gives:

- logdet(I): the D-optimality figure the greedy search maximises (the volume of the weight space
  the sites can tell apart, in log units; 0 = nothing beyond the prior);
- posterior sd of each weight, sqrt(diag(I^-1)): 1 = not observed at all, 0.1 = resolved to a
  tenth of its range, in this linear, noise-only picture (it ignores the model's own error).

Greedy selection adds, one at a time, the site that raises logdet(I) most. logdet is submodular
here, so the greedy pick is within a factor (1 - 1/e) of the best K-subset's gain.

The face model lives in `imusic.sim.face` (a layer above this one); it is imported only when no
`model` is passed, so `imusic.placement` itself never needs the simulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from imusic.arkit import BLENDSHAPES, N_BLENDSHAPES, REGIONS
from imusic.placement.layout import IMUSIC_ZONES, Catalogue, LayoutError, Site, load_catalogue

RESOLVED_SD = 0.1  # a weight whose posterior sd is below this counts as resolved


class SensitivityModel(Protocol):
    def sensitivity(self, position_mm: np.ndarray, normal: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class NoiseModel:
    """Noise-equivalent resolution of one IMU's view of its site (see docs/placement.md).

    displacement_mm: skin displacement is seen only through acceleration (d^2x/dt^2); at the 1-3 Hz
        of expressions and speech, 0.5 mm of motion gives 2-18 mg, against about 1 mg rms of
        accelerometer noise in a 30 Hz band: a few times the noise. Slow expressions see less.
    rotation_deg: skin tilt relative to the head reference from two orientation filters over
        seconds: a few tenths of a degree.
    prior_weight_sd: what is known without sensors: weights lie in 0..1.
    """

    displacement_mm: float = 0.5
    rotation_deg: float = 0.2
    prior_weight_sd: float = 1.0

    def weights(self) -> np.ndarray:
        """diag(W): (6,) inverse variances for (displacement xyz, rotation xyz)."""
        rot_rad = np.deg2rad(self.rotation_deg)
        return np.array([self.displacement_mm ** -2] * 3 + [rot_rad ** -2] * 3)


def default_model() -> SensitivityModel:
    from imusic.sim.face import FaceModel  # the simulator: a layer above placement

    return FaceModel()


def _as_sites(sites: Iterable[str | Site], catalogue: Catalogue) -> list[Site]:
    return [s if isinstance(s, Site) else catalogue.site(s) for s in sites]


def site_information(sites: Sequence[Site], model: SensitivityModel | None = None,
                     noise: NoiseModel = NoiseModel()) -> np.ndarray:
    """(n, 52, 52) Fisher information about the weights contributed by each site."""
    if not sites:
        return np.zeros((0, N_BLENDSHAPES, N_BLENDSHAPES))
    model = model or default_model()
    position_mm = np.stack([s.position_mm for s in sites])
    normal = np.stack([s.normal for s in sites])
    jac = np.asarray(model.sensitivity(position_mm, normal), dtype=float)
    if jac.shape != (len(sites), 6, N_BLENDSHAPES):
        raise ValueError(f"sensitivity model returned shape {jac.shape}, expected ({len(sites)}, 6, 52)")
    return np.einsum("nak,a,nal->nkl", jac, noise.weights(), jac)


def _prior(noise: NoiseModel) -> np.ndarray:
    return np.eye(N_BLENDSHAPES) / noise.prior_weight_sd ** 2


def _logdet(matrix: np.ndarray) -> float:
    sign, value = np.linalg.slogdet(matrix)
    if sign <= 0:  # cannot happen with a positive prior; guards against a broken model
        raise ValueError("information matrix is not positive definite")
    return float(value)


def _summary(chosen: Sequence[Site], info: np.ndarray, noise: NoiseModel) -> dict[str, Any]:
    prior = _prior(noise)
    total = prior + info.sum(axis=0) if len(chosen) else prior
    sd = np.sqrt(np.diag(np.linalg.inv(total)))
    per_shape = {name: float(v) for name, v in zip(BLENDSHAPES, sd)}
    regions = {region: {"median_sd": float(np.median([per_shape[n] for n in names])),
                        "resolved": int(sum(per_shape[n] <= RESOLVED_SD for n in names)),
                        "shapes": len(names)}
               for region, names in REGIONS.items()}
    zones = sorted({s.zone for s in chosen})
    return {
        "sites": [s.name for s in chosen],
        "zones": zones,
        "missing_imusic_zones": [z for z in IMUSIC_ZONES if z not in zones],
        "logdet": _logdet(total) - _logdet(prior),
        "resolved": int(np.sum(sd <= RESOLVED_SD)),
        "posterior_sd": per_shape,
        "regions": regions,
        "noise": {"displacement_mm": noise.displacement_mm, "rotation_deg": noise.rotation_deg,
                  "prior_weight_sd": noise.prior_weight_sd},
    }


def observability(sites: Iterable[str | Site], *, catalogue: Catalogue | None = None,
                  model: SensitivityModel | None = None, noise: NoiseModel = NoiseModel()) -> dict[str, Any]:
    """How well these sites observe the blendshapes: logdet (information gain over the prior, nats),
    posterior sd per blendshape, per region (imusic.arkit.REGIONS) the median sd and the count
    resolved to <= RESOLVED_SD, and the zones covered. Rigid sites add (almost) nothing."""
    chosen = _as_sites(sites, catalogue or load_catalogue())
    return _summary(chosen, site_information(chosen, model, noise), noise)


def greedy_select(k: int, *, catalogue: Catalogue | None = None, model: SensitivityModel | None = None,
                  noise: NoiseModel = NoiseModel(), cover_zones: Sequence[str] = ()) -> dict[str, Any]:
    """K face (non-rigid) sites chosen greedily for logdet of the information matrix.

    cover_zones: zones the pick must include (for example IMUSIC_ZONES). The search stays greedy
    but, once the slots left equal the zones still uncovered, only sites of those zones compete.
    Empty (the default): the plain greedy pick. Returns `observability` of the pick plus
    "order" (site, logdet gain) in the order chosen and "constrained_by"."""
    catalogue = catalogue or load_catalogue()
    candidates = [s for s in catalogue.sites.values() if not s.rigid]
    if not 1 <= k <= len(candidates):
        raise LayoutError(f"k must be 1..{len(candidates)} (the catalogue's face sites), not {k}")
    unknown = [z for z in cover_zones if z not in {s.zone for s in candidates}]
    if unknown:
        raise LayoutError(f"no face site in zone {unknown[0]!r}")
    if len(set(cover_zones)) > k:
        raise LayoutError(f"cannot cover {len(set(cover_zones))} zones with {k} sites")
    info = site_information(candidates, model, noise)
    total = _prior(noise)
    chosen: list[int] = []
    order: list[tuple[str, float]] = []
    for _ in range(k):
        uncovered = set(cover_zones) - {candidates[i].zone for i in chosen}
        slots_left = k - len(chosen)
        pool = [i for i in range(len(candidates)) if i not in chosen
                and (len(uncovered) < slots_left or candidates[i].zone in uncovered)]
        base = _logdet(total)
        gains = [(_logdet(total + info[i]) - base, i) for i in pool]
        gain, best = max(gains, key=lambda g: (g[0], -g[1]))  # ties: catalogue order
        chosen.append(best)
        order.append((candidates[best].name, gain))
        total = total + info[best]
    picked = [candidates[i] for i in chosen]
    result = _summary(picked, info[chosen], noise)
    result["order"] = [{"site": name, "gain": gain} for name, gain in order]
    result["constrained_by"] = list(cover_zones)
    return result
