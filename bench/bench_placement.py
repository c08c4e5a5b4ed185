"""Placement observability: the optimiser's 11-site picks beside the shipped layouts.

Prints, per face region (imusic.arkit.REGIONS), the median posterior sd of the blendshape weights
and how many are resolved (sd <= 0.1), the logdet of the information matrix, the picks themselves,
and how the plain pick's zone coverage changes with the noise model. docs/placement.md quotes it.
Model: imusic.sim.face.FaceModel().sensitivity; method: imusic.placement.optimize.
"""

from __future__ import annotations

import time

from imusic.arkit import REGIONS
from imusic.placement import IMUSIC_ZONES, load_layout
from imusic.placement.optimize import NoiseModel, greedy_select, observability


def main() -> None:
    t0 = time.perf_counter()
    noise = NoiseModel()
    columns = {
        "greedy": greedy_select(11, noise=noise),
        "greedy+zones": greedy_select(11, noise=noise, cover_zones=IMUSIC_ZONES),
    }
    for name in ("imusic", "compact", "minimal"):
        columns[name] = observability(load_layout(name).face_sites, noise=noise)
    elapsed = time.perf_counter() - t0
    names = list(columns)
    print(f"noise: displacement {noise.displacement_mm} mm, rotation {noise.rotation_deg} deg, "
          f"prior sd {noise.prior_weight_sd}\n")
    print("| region (shapes) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print("| face sites | " + " | ".join(str(len(columns[n]["sites"])) for n in names) + " |")
    print("| logdet (nats) | " + " | ".join(f"{columns[n]['logdet']:.1f}" for n in names) + " |")
    print("| resolved of 52 | " + " | ".join(str(columns[n]["resolved"]) for n in names) + " |")
    for region, shapes in REGIONS.items():
        cells = [f"{columns[n]['regions'][region]['median_sd']:.2f} ({columns[n]['regions'][region]['resolved']})"
                 for n in names]
        print(f"| {region} ({len(shapes)}) | " + " | ".join(cells) + " |")
    print("\ncells: median posterior sd of the region's weights (number resolved to sd <= 0.1)\n")
    for n in ("greedy", "greedy+zones"):
        order = ", ".join(f"{s['site']} (+{s['gain']:.1f})" for s in columns[n]["order"])
        missing = columns[n]["missing_imusic_zones"]
        print(f"{n}: {order}")
        print(f"  IMUSIC zones missed: {', '.join(missing) if missing else 'none'}\n")
    print("plain greedy pick vs the noise model (IMUSIC zones missed):\n")
    print("| displacement mm | rotation deg | logdet | resolved | zones missed |")
    print("|---|---|---|---|---|")
    for d_mm in (0.2, 0.5, 2.0, 1e6):
        for r_deg in (0.1, 0.2, 0.5):
            pick = greedy_select(11, noise=NoiseModel(d_mm, r_deg))
            d_text = "none (rotation only)" if d_mm >= 1e6 else str(d_mm)
            print(f"| {d_text} | {r_deg} | {pick['logdet']:.1f} | {pick['resolved']} | "
                  f"{', '.join(pick['missing_imusic_zones']) or 'none'} |")
    print(f"\n(optimiser and layout figures computed in {elapsed:.2f} s)")


if __name__ == "__main__":
    main()
