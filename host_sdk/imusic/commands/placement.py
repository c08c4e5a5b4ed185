"""``imusic placement``: face layouts: list them, check one, draw one, and pick sites by optimisation.

    imusic placement list
    imusic placement check imusic            (or a .yaml file)
    imusic placement show imusic --out face.svg
    imusic placement optimize --k 11 [--cover-zones] [--layout-name NAME] [--json]

docs/placement.md describes the face frame, the catalogue, the layouts and the optimiser.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from imusic.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    lst = sub.add_parser("list", help="the shipped layouts and the size of the site catalogue")
    lst.add_argument("--markdown", action="store_true", help="print the site catalogue as a Markdown table")
    check = sub.add_parser("check", help="validate a layout and print its sites and wiring")
    check.add_argument("layout", help="layout name (imusic, compact, minimal) or a .yaml file")
    show = sub.add_parser("show", help="draw a layout on a face outline (needs imusic[plot])")
    show.add_argument("layout", help="layout name or a .yaml file")
    show.add_argument("--out", required=True, help="output drawing: FILE.svg or FILE.png")
    opt = sub.add_parser("optimize", help="pick K catalogue sites maximising blendshape observability")
    opt.add_argument("--k", type=int, required=True, help="number of face sites to pick")
    opt.add_argument("--cover-zones", action="store_true",
                     help="force at least one site in each zone IMUSIC names (default: plain greedy)")
    opt.add_argument("--layout-name", metavar="NAME",
                     help="also print the pick as a layout file NAME (one node, head reference nasion)")
    opt.add_argument("--displacement-mm", type=float, default=None,
                     help="noise-equivalent skin displacement (default 0.5 mm)")
    opt.add_argument("--rotation-deg", type=float, default=None,
                     help="noise-equivalent skin rotation (default 0.2 deg)")
    opt.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _catalogue_markdown() if args.markdown else _list()
    if args.action == "check":
        return _check(args.layout)
    if args.action == "show":
        return _show(args.layout, args.out)
    return _optimize(args)


def _list() -> int:
    from imusic.placement import load_catalogue, load_layout, list_layouts

    catalogue = load_catalogue()
    print(f"{'layout':<10} {'IMUs':>4}  description")
    for name in list_layouts():
        layout = load_layout(name)
        print(f"{name:<10} {len(layout.imus):>4}  {layout.description}")
    rigid = sum(s.rigid for s in catalogue.sites.values())
    print(f"\ncatalogue: {len(catalogue)} sites ({len(catalogue) - rigid} face, {rigid} rigid head-reference "
          f"candidates) in {len(catalogue.zones())} zones: {catalogue.path}")
    return 0


def _catalogue_markdown() -> int:
    """The catalogue as the table in docs/placement.md (a left/right pair on one row)."""
    from imusic.placement import load_catalogue

    print("| site | position_mm (x, y, z) | normal | zone | muscle | observes | rigid |")
    print("|---|---|---|---|---|---|---|")
    for site in load_catalogue().sites.values():
        if site.name.endswith("_right"):
            continue
        name = site.name[:-5] + "_left / _right" if site.name.endswith("_left") else site.name
        position = ", ".join(f"{v:g}" for v in site.position_mm)
        normal = ", ".join(f"{v:.2f}" for v in site.normal)
        print(f"| {name} | {position} | {normal} | {site.zone} | {site.muscle} | "
              f"{', '.join(site.observes) or '-'} | {'yes' if site.rigid else 'no'} |")
    return 0


def _check(name: str) -> int:
    from imusic.placement import load_layout

    layout = load_layout(name)
    print(f"layout {layout.name}: {len(layout.imus)} IMUs on node(s) {', '.join(map(str, layout.node_ids))}, "
          f"{layout.rate_hz} Hz, head reference {layout.head_reference}")
    header = f"{'#':>2} {'site':<32} {'node':>4} {'bus':>3} {'mux':>4} {'ch':>2} {'chip':<8} {'mag':<3} {'zone':<22} muscle"
    print(header)
    for i, imu in enumerate(layout.imus):
        site = layout.site(imu.site)
        mux = f"0x{imu.mux:02x}" if imu.mux is not None else "-"
        channel = str(imu.channel) if imu.channel is not None else "-"
        print(f"{i:>2} {imu.site:<32} {imu.node_id:>4} {imu.bus:>3} {mux:>4} {channel:>2} {imu.chip:<8} "
              f"{'yes' if imu.mag else 'no':<3} {site.zone:<22} {site.muscle}")
    print("ok")
    return 0


def _show(name: str, out: str) -> int:
    from imusic.placement import load_layout
    from imusic.placement.draw import draw_layout

    layout = load_layout(name)
    path = draw_layout(layout, out)
    print(f"wrote {path} ({len(layout.imus)} sites of layout {layout.name})")
    return 0


def layout_yaml(name: str, sites: list[str], head_reference: str = "nasion") -> str:
    """A layout file putting `sites` (plus the head reference, with the magnetometer) on nodes of at
    most 16 IMUs: each node's first half on bus 0, the rest on bus 1, one TCA9548A channel each."""
    import yaml

    all_sites = [head_reference] + [s for s in sites if s != head_reference]
    nodes: list[dict[str, Any]] = []
    for start in range(0, len(all_sites), 16):
        chunk = all_sites[start:start + 16]
        on_bus0 = (len(chunk) + 1) // 2
        imus = []
        for i, site in enumerate(chunk):
            bus = 0 if i < on_bus0 else 1
            imus.append({"site": site, "bus": bus, "mux": 0x70, "channel": i if bus == 0 else i - on_bus0,
                         "chip": "qmi8658", "mag": site == head_reference,
                         "reason": "head reference" if site == head_reference else "picked by imusic placement optimize"})
        nodes.append({"node_id": len(nodes) + 1, "imus": imus})
    data = {"name": name, "description": f"optimizer pick of {len(sites)} face sites", "rate_hz": 60,
            "head_reference": head_reference, "nodes": nodes}
    return yaml.safe_dump(data, sort_keys=False)


def _optimize(args: argparse.Namespace) -> int:
    from imusic.placement import IMUSIC_ZONES, load_layout, list_layouts
    from imusic.placement.optimize import NoiseModel, greedy_select, observability

    defaults = NoiseModel()
    noise = NoiseModel(displacement_mm=args.displacement_mm or defaults.displacement_mm,
                       rotation_deg=args.rotation_deg or defaults.rotation_deg)
    if noise.displacement_mm <= 0 or noise.rotation_deg <= 0:
        raise UserError("--displacement-mm and --rotation-deg must be positive")
    if args.layout_name is not None and not args.layout_name.isidentifier():
        raise UserError(f"--layout-name {args.layout_name!r}: use letters, digits and underscores")
    pick = greedy_select(args.k, noise=noise, cover_zones=IMUSIC_ZONES if args.cover_zones else ())
    layouts = {name: observability(load_layout(name).face_sites, noise=noise) for name in list_layouts()}
    result: dict[str, Any] = {"k": args.k, "pick": pick, "layouts": layouts}
    if args.layout_name:
        result["layout_yaml"] = layout_yaml(args.layout_name, pick["sites"])
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(report(pick, layouts, noise))
    if args.layout_name:
        print(f"\n# layout {args.layout_name} (save as {args.layout_name}.yaml)\n{result['layout_yaml']}", end="")
    return 0


def report(pick: dict[str, Any], layouts: dict[str, dict[str, Any]], noise: Any) -> str:
    """The optimiser's result as text: the pick, per-region and per-blendshape figures beside the layouts."""
    from imusic.arkit import BLENDSHAPES, REGIONS
    from imusic.placement.optimize import RESOLVED_SD

    lines = [f"greedy D-optimal pick of {len(pick['sites'])} face sites (noise: displacement "
             f"{noise.displacement_mm} mm, rotation {noise.rotation_deg} deg; prior sd 1 weight unit)"]
    if pick["constrained_by"]:
        lines.append(f"constrained to cover: {', '.join(pick['constrained_by'])}")
    for i, step in enumerate(pick["order"], 1):
        lines.append(f"  {i:>2}. {step['site']:<32} +{step['gain']:.1f} nats")
    lines.append(f"zones covered: {', '.join(pick['zones'])}")
    missing = pick["missing_imusic_zones"]
    lines.append("IMUSIC zones: all covered" if not missing else f"IMUSIC zones missed: {', '.join(missing)}")
    columns = {"pick": pick, **layouts}
    names = list(columns)
    lines.append("")
    lines.append(f"{'':<22}" + "".join(f"{n:>10}" for n in names))
    lines.append(f"{'face sites':<22}" + "".join(f"{len(columns[n]['sites']):>10}" for n in names))
    lines.append(f"{'logdet (nats)':<22}" + "".join(f"{columns[n]['logdet']:>10.1f}" for n in names))
    lines.append(f"{'resolved (of 52)':<22}" + "".join(f"{columns[n]['resolved']:>10}" for n in names))
    lines.append(f"median posterior sd per region (weight units; 1 = unobserved; resolved: sd <= {RESOLVED_SD})")
    for region in REGIONS:
        lines.append(f"  {region:<20}" + "".join(f"{columns[n]['regions'][region]['median_sd']:>10.2f}" for n in names))
    lines.append("posterior sd per blendshape")
    for shape in BLENDSHAPES:
        lines.append(f"  {shape:<20}" + "".join(f"{columns[n]['posterior_sd'][shape]:>10.2f}" for n in names))
    return "\n".join(lines)
