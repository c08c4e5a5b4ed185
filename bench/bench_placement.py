"""Placement observability: the optimiser's 11-site picks beside the shipped layouts, why zones are
missed, and how each part of the objective changes the pick.

Prints (docs/placement.md quotes it):
1. under the default objective (expression-data prior, sensor + placement + shared skin error): per
   face region (imusic.arkit.REGIONS) the median share of each shape's variance explained and the
   number resolved (>= 90 %), the information in nats, the picks with their gains, and a one-swap
   check of the greedy pick;
2. for each IMUSIC zone the plain pick misses: what its best site would add, against the weakest
   site of the pick, and the shapes it would explain; for the chin, its view against the sub-labial
   sites';
3. what the placement and shared-skin error terms do to single sites and to pairs;
4. an ablation: each part of the objective on and off, with the zones missed;
5. the default pick against its parameters, and with the lip sites excluded.
Model: imusic.sim.face.FaceModel().sensitivity and imusic.sim.expressions; method:
imusic.placement.optimize. All of it is the simulator's model, not a measurement on people.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from imusic.arkit import BLENDSHAPES, REGIONS
from imusic.placement import IMUSIC_ZONES, load_catalogue, load_layout
from imusic.placement.optimize import NoiseModel, Problem, WeightPrior, best_swap, greedy_select

K = 11
LAYOUTS = ("imusic", "compact", "minimal")


def face_problem(noise: NoiseModel = NoiseModel(), prior: WeightPrior | None = None,
                 exclude: tuple[str, ...] = ()) -> Problem:
    sites = [s for s in load_catalogue().sites.values() if not s.rigid and s.name not in exclude]
    return Problem(sites, noise=noise, prior=prior)


def layout_summary(problem: Problem, name: str) -> dict[str, Any]:
    names = [s.name for s in problem.sites]
    return problem.summary([names.index(s) for s in load_layout(name).face_sites])


def main_table(problem: Problem) -> dict[str, dict[str, Any]]:
    columns = {"greedy": greedy_select(K, problem=problem),
               "greedy+zones": greedy_select(K, problem=problem, cover_zones=IMUSIC_ZONES)}
    for name in LAYOUTS:
        columns[name] = layout_summary(problem, name)
    names = list(columns)
    print("| region (shapes) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print("| face sites | " + " | ".join(str(len(columns[n]["sites"])) for n in names) + " |")
    print("| information (nats) | " + " | ".join(f"{columns[n]['logdet']:.1f}" for n in names) + " |")
    print("| resolved of 52 | " + " | ".join(str(columns[n]["resolved"]) for n in names) + " |")
    for region, shapes in REGIONS.items():
        cells = [f"{columns[n]['regions'][region]['median_explained']:.2f} ({columns[n]['regions'][region]['resolved']})"
                 for n in names]
        print(f"| {region} ({len(shapes)}) | " + " | ".join(cells) + " |")
    print("\ncells: median share of the region's shapes' variance explained (number resolved, >= 0.9)\n")
    for n in ("greedy", "greedy+zones"):
        order = ", ".join(f"{s['site']} (+{s['gain']:.1f})" for s in columns[n]["order"])
        missing = columns[n]["missing_imusic_zones"]
        print(f"- {n}: {order}")
        print(f"  - IMUSIC zones missed: {', '.join(missing) if missing else 'none'}")
        gain, out, into = best_swap(columns[n]["sites"], problem)
        print(f"  - best single swap: {out} -> {into}: {gain:+.2f} nats")
    print()
    return columns


def why_missed(problem: Problem, pick: dict[str, Any]) -> None:
    names = [s.name for s in problem.sites]
    chosen = [names.index(s) for s in pick["sites"]]
    base = problem.information(chosen)
    weakest = min((base - problem.information([c for c in chosen if c != r]), names[r]) for r in chosen)
    print(f"- weakest site of the pick: {weakest[1]}, {weakest[0]:.2f} nats (what dropping it loses)")
    before = np.array([pick["explained"][b] for b in BLENDSHAPES])
    for zone in pick["missing_imusic_zones"]:
        options = [(problem.information(chosen + [i]) - base, i) for i, s in enumerate(problem.sites) if s.zone == zone]
        add, best = max(options)
        after = np.array([problem.summary(chosen + [best])["explained"][b] for b in BLENDSHAPES])
        top = np.argsort(-(after - before))[:3]
        shapes = ", ".join(f"{BLENDSHAPES[k]} {before[k]:.2f}->{after[k]:.2f}" for k in top)
        print(f"- {zone}: best site {names[best]} would add {add:.2f} nats (explained: {shapes})")
    # the chin against the sites just below the lower lip: per-shape signal / sensor noise
    sensor_sd = np.sqrt(problem.noise.sensor_variance())
    compare = ["mentalis", "orbicularis_oris_lower", "depressor_labii_left"]
    snr = {n: np.linalg.norm(problem.jac[6 * names.index(n):6 * names.index(n) + 6] / sensor_sd[:, None], axis=0)
           for n in compare if n in names}
    if "mentalis" in snr:
        top = np.argsort(-snr["mentalis"])[:5]
        print("\nsignal / sensor noise per unit weight (displacement and rotation together):\n")
        print("| shape | " + " | ".join(snr) + " |")
        print("|---|" + "---|" * len(snr))
        for k in top:
            print(f"| {BLENDSHAPES[k]} | " + " | ".join(f"{snr[n][k]:.0f}" for n in snr) + " |")
    print()


def ablation() -> None:
    flat, expr = WeightPrior.flat(), WeightPrior.expressions()
    sensor_only = NoiseModel(placement_mm=0.0, skin_mm=0.0)
    variants: list[tuple[str, NoiseModel, WeightPrior]] = [
        ("flat prior, sensor noise (the old objective)", sensor_only, flat),
        ("flat, + shared skin 0.5 mm / 15 mm", NoiseModel(placement_mm=0.0), flat),
        ("flat, + shared skin 2 mm / 20 mm", NoiseModel(placement_mm=0.0, skin_mm=2.0, skin_length_mm=20.0), flat),
        ("flat, + placement 1.9 mm (E[ww^T] = I: overstated)", NoiseModel(skin_mm=0.0), flat),
        ("expression prior, sensor noise", sensor_only, expr),
        ("expression, + shared skin", NoiseModel(placement_mm=0.0), expr),
        ("expression, + placement", NoiseModel(skin_mm=0.0), expr),
        ("expression, + placement + shared skin (default)", NoiseModel(), expr),
    ]
    print("| objective | information | resolved | IMUSIC zones missed | cost of covering them | "
          "imusic | compact | minimal |")
    print("|---|---|---|---|---|---|---|---|")
    for label, noise, prior in variants:
        problem = face_problem(noise, prior)
        plain = greedy_select(K, problem=problem)
        covered = greedy_select(K, problem=problem, cover_zones=IMUSIC_ZONES)
        layouts = " | ".join(f"{layout_summary(problem, n)['logdet']:.1f}" for n in LAYOUTS)
        print(f"| {label} | {plain['logdet']:.1f} | {plain['resolved']} | "
              f"{', '.join(plain['missing_imusic_zones']) or 'none'} | "
              f"{plain['logdet'] - covered['logdet']:.1f} | {layouts} |")
    print()


def sensitivity() -> None:
    print("| setting | information | IMUSIC zones missed |")
    print("|---|---|---|")
    rows: list[tuple[str, NoiseModel, WeightPrior, tuple[str, ...]]] = []
    for mm in (1.0, 2.8):
        rows.append((f"placement {mm} mm", NoiseModel(placement_mm=mm), WeightPrior.expressions(), ()))
    for mm in (0.0, 1.0):
        rows.append((f"shared skin {mm} mm", NoiseModel(skin_mm=mm), WeightPrior.expressions(), ()))
    for length in (10.0, 25.0):
        rows.append((f"skin correlation length {length:.0f} mm", NoiseModel(skin_length_mm=length),
                     WeightPrior.expressions(), ()))
    for floor in (0.03, 0.1):
        rows.append((f"prior floor sd {floor}", NoiseModel(), WeightPrior.expressions(floor), ()))
    for sd in (0.25, 1.0):
        rows.append((f"sensor x{sd / 0.5:g} ({sd} mm, {0.4 * sd:g} deg)",
                     NoiseModel(displacement_mm=sd, rotation_deg=0.4 * sd), WeightPrior.expressions(), ()))
    lips = ("orbicularis_oris_upper", "orbicularis_oris_lower")
    rows.append(("lip sites excluded", NoiseModel(), WeightPrior.expressions(), lips))
    rows.append(("lip and sub-labial sites excluded", NoiseModel(), WeightPrior.expressions(),
                 lips + ("depressor_labii_left", "depressor_labii_right")))
    for label, noise, prior, exclude in rows:
        pick = greedy_select(K, problem=face_problem(noise, prior, exclude))
        print(f"| {label} | {pick['logdet']:.1f} | {', '.join(pick['missing_imusic_zones']) or 'none'} |")


def error_effects() -> None:
    """What the two error terms do to single sites and pairs, on their own."""
    catalogue = load_catalogue()
    print("second site's gain (nats), flat prior, sensor noise, with and without 2 mm of skin motion shared "
          "over 15 mm:\n")
    print("| pair | distance mm | no shared motion | shared motion |")
    print("|---|---|---|---|")
    for a, b in (("buccinator_left", "zygomaticus_major_left"), ("zygomaticus_minor_left", "orbicularis_oculi_lower_left"),
                 ("frontalis_medial_left", "corrugator_left"), ("risorius_left", "risorius_right")):
        sites = [catalogue.site(a), catalogue.site(b)]
        cells = []
        for skin_mm in (0.0, 2.0):
            problem = Problem(sites, noise=NoiseModel(placement_mm=0.0, skin_mm=skin_mm), prior=WeightPrior.flat())
            cells.append(f"{problem.information([0, 1]) - problem.information([0]):.1f}")
        distance = float(np.linalg.norm(sites[0].position_mm - sites[1].position_mm))
        print(f"| {a} + {b} | {distance:.0f} | " + " | ".join(cells) + " |")
    print("\nshare of a single site's information kept under 1.9 mm placement error (expression prior):\n")
    print("| site | without (nats) | with (nats) | kept |")
    print("|---|---|---|---|")
    for name in ("orbicularis_oris_upper", "risorius_left", "orbicularis_oris_lower", "masseter_left",
                 "frontalis_medial_left", "zygomaticus_minor_left", "mentalis"):
        without = Problem([catalogue.site(name)], noise=NoiseModel(placement_mm=0.0, skin_mm=0.0)).information([0])
        with_error = Problem([catalogue.site(name)], noise=NoiseModel(skin_mm=0.0)).information([0])
        print(f"| {name} | {without:.1f} | {with_error:.1f} | {with_error / without:.2f} |")
    print()


def main() -> None:
    t0 = time.perf_counter()
    problem = face_problem()
    noise = problem.noise
    print(f"default objective: expression-data prior (floor sd {problem.prior.info['floor_sd']}); sensor "
          f"{noise.displacement_mm} mm / {noise.rotation_deg} deg; placement {noise.placement_mm} mm rms; "
          f"shared skin motion {noise.skin_mm} mm over {noise.skin_length_mm} mm\n")
    columns = main_table(problem)
    why_missed(problem, columns["greedy"])
    error_effects()
    ablation()
    sensitivity()
    print(f"\n(computed in {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
