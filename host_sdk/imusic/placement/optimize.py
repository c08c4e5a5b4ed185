"""Which face sites see the 52 blendshapes best: greedy information-maximising selection over the
catalogue.

The model is linear and Gaussian. At a site, the simulator's face model gives the sensitivity J
(6 x 52): skin displacement (mm, 3) and rotation (rad, 3) per unit blendshape weight, linearised at
a typical activation (`FaceModel.sensitivity`). A set of sites measures y = J w + e (J stacked over
the sites), with

- w, the 52 weights: a prior covariance (`WeightPrior`): by default the covariance of the weights in
  the simulator's expression data (talk, emotions, blinks, gaze, idle), so a shape that hardly moves
  in real expression counts for little; `WeightPrior.flat()` gives every weight sd 1 (the objective
  this module used before).
- e, the error (`NoiseModel`), with three parts:
  * sensor: each IMU resolves displacement and rotation to a noise-equivalent sigma, independent
    between sites;
  * placement: an IMU glued a few mm off its site sees J at the wrong point. For a model that must
    work on every wearer this is an error of (dJ/dp) dp w, independent between sites, growing with
    the local gradient of the motion field and with how much the face moves: its covariance is
    sigma_p^2 sum_t (dJ/dt) E[w w^T] (dJ/dt)^T over two skin tangents t;
  * skin: unmodelled skin motion (tissue wobble under head motion, motion outside the 52 shapes) is
    smooth over the face, so neighbouring sites share it: covariance skin_mm^2 K(d_ij) on the
    displacement channels, K(d) = exp(-d^2 / (2 L^2)).

The figure of merit is the mutual information between the weights and the set's measurements,
logdet(C + J S J^T) - logdet(C) nats (S the prior covariance, C the error covariance): the
log-volume by which the sites shrink the weights' uncertainty. Per blendshape the posterior variance
diag(S - S J^T (C + J S J^T)^-1 J S) gives the fraction of its variance the sites explain; a shape
counts as resolved at RESOLVED_EXPLAINED. docs/placement.md says why each part is there and what it
changes.

Greedy selection adds, one at a time, the site that raises the information most. With errors
independent between sites the objective is submodular and greedy is within (1 - 1/e) of the best
subset's gain; the correlated skin term breaks that guarantee, so the bench also checks that no
single swap improves the pick.

The face model and the expression generator live in `imusic.sim` (a layer above this one); they are
imported only when needed, so `imusic.placement` itself never needs the simulator.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from imusic.arkit import BLENDSHAPES, N_BLENDSHAPES, REGIONS
from imusic.errors import UserError
from imusic.placement.layout import IMUSIC_ZONES, Catalogue, LayoutError, Site, load_catalogue

RESOLVED_EXPLAINED = 0.9  # a shape whose variance the sites explain to this fraction counts as resolved
PLACEMENT_STEP_MM = 1.0   # finite-difference step for dJ/dp


class OptimizeError(UserError):
    """A bad optimiser setting (noise or prior parameter): one line naming it."""


class SensitivityModel(Protocol):
    def sensitivity(self, position_mm: np.ndarray, normal: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class NoiseModel:
    """What limits an IMU's view of its site (see docs/placement.md for the numbers).

    displacement_mm: skin displacement reaches an IMU only as acceleration; at the 1-3 Hz of
        expressions and speech 0.5 mm gives 2-18 mg, against ~1 mg rms accelerometer noise in a
        30 Hz band: a few times the noise.
    rotation_deg: skin tilt relative to the head reference from two orientation filters.
    placement_mm: rms in-skin offset of a glued IMU from its site; 1.9 mm is the simulator's own
        placement error (U(0.2, 1.2) x 2.5 mm in a random skin-tangent direction, imusic.sim.imu).
    skin_mm, skin_length_mm: rms and correlation length of skin displacement shared by neighbouring
        sites and not explained by the 52 shapes (a documented choice, not a measured figure).
    """

    displacement_mm: float = 0.5
    rotation_deg: float = 0.2
    placement_mm: float = 1.9
    skin_mm: float = 0.5
    skin_length_mm: float = 15.0

    def __post_init__(self) -> None:
        for name in ("displacement_mm", "rotation_deg", "skin_length_mm"):
            if not getattr(self, name) > 0:
                raise OptimizeError(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("placement_mm", "skin_mm"):
            if not getattr(self, name) >= 0:
                raise OptimizeError(f"{name} must be zero or positive, not {getattr(self, name)}")

    def sensor_variance(self) -> np.ndarray:
        """(6,) variances for (displacement xyz mm^2, rotation xyz rad^2)."""
        rot_rad = np.deg2rad(self.rotation_deg)
        return np.array([self.displacement_mm ** 2] * 3 + [rot_rad ** 2] * 3)

    def describe(self) -> dict[str, float]:
        return {"displacement_mm": self.displacement_mm, "rotation_deg": self.rotation_deg,
                "placement_mm": self.placement_mm, "skin_mm": self.skin_mm, "skin_length_mm": self.skin_length_mm}


@dataclass(frozen=True, eq=False)
class WeightPrior:
    """What the weights do before any sensor is read: covariance (52, 52) and second moment
    E[w w^T] (52, 52) (the placement error scales with how far the face actually moves)."""

    name: str
    cov: np.ndarray
    second_moment: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def flat(sd: float = 1.0) -> WeightPrior:
        """Every weight independent with sd `sd` around 0: all 52 shapes count alike."""
        if not sd > 0:
            raise OptimizeError(f"prior sd must be positive, not {sd}")
        cov = np.eye(N_BLENDSHAPES) * sd ** 2
        return WeightPrior("flat", cov, cov.copy(), {"sd": sd})

    @staticmethod
    def expressions(floor_sd: float = 0.05, subjects: int = 8, seconds: float = 120.0) -> WeightPrior:
        """The weights' covariance in the simulator's expression data (program "mixed", `subjects`
        random styles x `seconds`, fixed seeds), plus floor_sd^2 on every shape: shapes the generator
        never moves (jawLeft/Right, mouthLeft/Right, cheekPuff, tongueOut) still happen, about as
        often as its rarest mouth shapes (sd ~0.04-0.05)."""
        if not floor_sd > 0:
            raise OptimizeError(f"prior floor sd must be positive, not {floor_sd}")
        mean, cov = _expression_statistics(subjects, seconds)
        cov = cov + np.eye(N_BLENDSHAPES) * floor_sd ** 2
        return WeightPrior("expressions", cov, cov + np.outer(mean, mean),
                           {"floor_sd": floor_sd, "subjects": subjects, "seconds": seconds})

    def sd(self) -> np.ndarray:
        return np.sqrt(np.diag(self.cov))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.info}


@lru_cache(maxsize=4)
def _expression_statistics(subjects: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    from imusic.sim.expressions import ExpressionStyle, generate_blendshapes  # simulator: a layer above

    takes = [generate_blendshapes(seconds, seed=1000 + s, program="mixed",
                                  style=ExpressionStyle.random(np.random.default_rng([7, s])))
             for s in range(subjects)]
    w = np.concatenate(takes).astype(np.float64)
    return w.mean(axis=0), np.cov(w, rowvar=False)


def default_model() -> SensitivityModel:
    from imusic.sim.face import FaceModel  # the simulator: a layer above placement

    return FaceModel()


def _as_sites(sites: Iterable[str | Site], catalogue: Catalogue) -> list[Site]:
    return [s if isinstance(s, Site) else catalogue.site(s) for s in sites]


def _tangents(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit skin tangents (n, 3) per outward normal (n, 3)."""
    n = normal / np.linalg.norm(normal, axis=1, keepdims=True)
    helper = np.where(np.abs(n[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    t1 = helper - n * np.sum(helper * n, axis=1, keepdims=True)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    return t1, np.cross(n, t1)


class Problem:
    """The linear-Gaussian observation model of a fixed list of sites: sensitivities, the full error
    covariance over all their channels, and the prior. Subsets are index lists into `sites`."""

    def __init__(self, sites: Sequence[Site], model: SensitivityModel | None = None,
                 noise: NoiseModel = NoiseModel(), prior: WeightPrior | None = None) -> None:
        self.sites = list(sites)
        self.noise = noise
        self.prior = prior or WeightPrior.expressions()
        n = len(self.sites)
        if n == 0:
            self.jac = np.zeros((0, N_BLENDSHAPES))
            self.error_cov = np.zeros((0, 0))
            return
        model = model or default_model()
        position_mm = np.stack([s.position_mm for s in self.sites]).astype(np.float64)
        normal = np.stack([s.normal for s in self.sites]).astype(np.float64)
        jac = self._sensitivity(model, position_mm, normal)
        self.jac = jac.reshape(n * 6, N_BLENDSHAPES)
        # sensor: independent per site and channel
        cov = np.kron(np.eye(n), np.diag(noise.sensor_variance()))
        # placement: independent per site, each site's 6 channels share the offset
        if noise.placement_mm > 0:
            var_per_tangent = noise.placement_mm ** 2 / 2.0
            h = PLACEMENT_STEP_MM
            for t in _tangents(normal):
                d_jac = (self._sensitivity(model, position_mm + h * t, normal)
                         - self._sensitivity(model, position_mm - h * t, normal)) / (2.0 * h)
                block = np.einsum("nak,kl,nbl->nab", d_jac, self.prior.second_moment, d_jac)
                for i in range(n):
                    cov[6 * i:6 * i + 6, 6 * i:6 * i + 6] += var_per_tangent * block[i]
        # skin: shared by neighbours on the displacement channels
        if noise.skin_mm > 0:
            dist_mm = np.linalg.norm(position_mm[:, None] - position_mm[None], axis=-1)
            kernel = np.exp(-0.5 * (dist_mm / noise.skin_length_mm) ** 2)
            cov += np.kron(kernel, np.diag([noise.skin_mm ** 2] * 3 + [0.0] * 3))
        self.error_cov = cov

    @staticmethod
    def _sensitivity(model: SensitivityModel, position_mm: np.ndarray, normal: np.ndarray) -> np.ndarray:
        jac = np.asarray(model.sensitivity(position_mm, normal), dtype=np.float64)
        if jac.shape != (len(position_mm), 6, N_BLENDSHAPES):
            raise ValueError(f"sensitivity model returned shape {jac.shape}, expected ({len(position_mm)}, 6, 52)")
        return jac

    def _rows(self, subset: Sequence[int]) -> np.ndarray:
        return np.concatenate([np.arange(6 * i, 6 * i + 6) for i in subset]) if len(subset) else np.zeros(0, int)

    def information(self, subset: Sequence[int]) -> float:
        """Mutual information (nats) between the weights and the measurements of `subset`."""
        if not len(subset):
            return 0.0
        rows = self._rows(subset)
        jac = self.jac[rows]
        err = self.error_cov[np.ix_(rows, rows)]
        return _logdet(err + jac @ self.prior.cov @ jac.T) - _logdet(err)

    def posterior_cov(self, subset: Sequence[int]) -> np.ndarray:
        prior = self.prior.cov
        if not len(subset):
            return prior.copy()
        rows = self._rows(subset)
        jac = self.jac[rows]
        total = self.error_cov[np.ix_(rows, rows)] + jac @ prior @ jac.T
        gain = prior @ jac.T
        return prior - gain @ np.linalg.solve(total, gain.T)

    def summary(self, subset: Sequence[int]) -> dict[str, Any]:
        chosen = [self.sites[i] for i in subset]
        post_sd = np.sqrt(np.clip(np.diag(self.posterior_cov(subset)), 0.0, None))
        prior_sd = self.prior.sd()
        explained = np.clip(1.0 - (post_sd / prior_sd) ** 2, 0.0, 1.0)
        per_shape = {name: float(v) for name, v in zip(BLENDSHAPES, explained)}
        regions = {region: {"median_explained": float(np.median([per_shape[n] for n in names])),
                            "resolved": int(sum(per_shape[n] >= RESOLVED_EXPLAINED for n in names)),
                            "shapes": len(names)}
                   for region, names in REGIONS.items()}
        zones = sorted({s.zone for s in chosen})
        return {
            "sites": [s.name for s in chosen],
            "zones": zones,
            "missing_imusic_zones": [z for z in IMUSIC_ZONES if z not in zones],
            "logdet": self.information(subset),
            "resolved": int(np.sum(explained >= RESOLVED_EXPLAINED)),
            "explained": per_shape,
            "posterior_sd": {name: float(v) for name, v in zip(BLENDSHAPES, post_sd)},
            "prior_sd": {name: float(v) for name, v in zip(BLENDSHAPES, prior_sd)},
            "regions": regions,
            "noise": self.noise.describe(),
            "prior": self.prior.describe(),
        }


def _logdet(matrix: np.ndarray) -> float:
    sign, value = np.linalg.slogdet(matrix)
    if sign <= 0:  # cannot happen with positive sensor noise; guards against a broken model
        raise ValueError("covariance matrix is not positive definite")
    return float(value)


def observability(sites: Iterable[str | Site], *, catalogue: Catalogue | None = None,
                  model: SensitivityModel | None = None, noise: NoiseModel = NoiseModel(),
                  prior: WeightPrior | None = None) -> dict[str, Any]:
    """How well these sites observe the blendshapes: "logdet" (mutual information with the weights,
    nats), per blendshape the fraction of its variance explained and the posterior sd, per region
    (imusic.arkit.REGIONS) the median explained and the count resolved (>= RESOLVED_EXPLAINED), and
    the zones covered. Rigid sites add nothing."""
    chosen = _as_sites(sites, catalogue or load_catalogue())
    problem = Problem(chosen, model, noise, prior)
    return problem.summary(list(range(len(chosen))))


def greedy_select(k: int, *, catalogue: Catalogue | None = None, model: SensitivityModel | None = None,
                  noise: NoiseModel = NoiseModel(), prior: WeightPrior | None = None,
                  cover_zones: Sequence[str] = (), exclude: Sequence[str] = (),
                  problem: Problem | None = None) -> dict[str, Any]:
    """K face (non-rigid) sites chosen greedily for information about the weights.

    cover_zones: zones the pick must include (for example IMUSIC_ZONES). The search stays greedy
    but, once the slots left equal the zones still uncovered, only sites of those zones compete.
    Empty (the default): the plain greedy pick. exclude: site names that may not be picked (a beard,
    a site that will not hold an IMU on this wearer). `problem`: a `Problem` over the catalogue's face
    sites built earlier (saves rebuilding it). Returns `observability` of the pick plus "order"
    (site, gain in nats) in the order chosen and "constrained_by"."""
    catalogue = catalogue or load_catalogue()
    if problem is None:
        problem = Problem([s for s in catalogue.sites.values() if not s.rigid], model, noise, prior)
    candidates = problem.sites
    for name in exclude:
        catalogue.site(name)  # an unknown name: one line naming it
    allowed = [i for i, s in enumerate(candidates) if s.name not in set(exclude)]
    if not 1 <= k <= len(allowed):
        raise LayoutError(f"k must be 1..{len(allowed)} (the catalogue's face sites left to pick), not {k}")
    unknown = [z for z in cover_zones if z not in {candidates[i].zone for i in allowed}]
    if unknown:
        raise LayoutError(f"no face site in zone {unknown[0]!r}")
    if len(set(cover_zones)) > k:
        raise LayoutError(f"cannot cover {len(set(cover_zones))} zones with {k} sites")
    chosen: list[int] = []
    order: list[tuple[str, float]] = []
    base = 0.0
    for _ in range(k):
        uncovered = set(cover_zones) - {candidates[i].zone for i in chosen}
        slots_left = k - len(chosen)
        pool = [i for i in allowed if i not in chosen
                and (len(uncovered) < slots_left or candidates[i].zone in uncovered)]
        scored = [(problem.information(chosen + [i]), i) for i in pool]
        value, best = max(scored, key=lambda g: (g[0], -g[1]))  # ties: catalogue order
        chosen.append(best)
        order.append((candidates[best].name, value - base))
        base = value
    result = problem.summary(chosen)
    result["order"] = [{"site": name, "gain": gain} for name, gain in order]
    result["constrained_by"] = list(cover_zones)
    result["excluded"] = list(exclude)
    return result


def best_swap(pick: Sequence[str], problem: Problem, exclude: Sequence[str] = ()) -> tuple[float, str, str]:
    """The single exchange (picked site out, other face site in) that raises the information most:
    (gain in nats, out, in). A gain <= 0 means the pick is a local optimum under one swap."""
    names = [s.name for s in problem.sites]
    chosen = [names.index(s) for s in pick]
    base = problem.information(chosen)
    best = (-np.inf, "", "")
    for out in chosen:
        rest = [i for i in chosen if i != out]
        for cand in range(len(names)):
            if cand in chosen or names[cand] in exclude:
                continue
            value = problem.information(rest + [cand]) - base
            if value > best[0]:
                best = (float(value), names[out], names[cand])
    return best
