"""``imusic placement``: face layouts: list them, check one, draw one, and pick sites by optimisation.

    imusic placement list
    imusic placement check imusic            (or a .yaml file)
    imusic placement show imusic --out face.svg
    imusic placement optimize --k 11 [--cover-zones] [--exclude SITES] [--prior expressions|flat]
                              [--placement-mm MM] [--skin-mm MM] [--layout-name NAME] [--json]

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
    opt.add_argument("--exclude", metavar="SITE[,SITE]", default="",
                     help="sites that may not be picked (beard, a site that will not hold an IMU)")
    opt.add_argument("--prior", choices=("expressions", "flat"), default="expressions",
                     help="weight prior: the covariance of the simulator's expression data (default) or sd 1 "
                          "for every shape (the old objective)")
    opt.add_argument("--prior-floor", type=float, default=None, metavar="SD",
                     help="sd added to every shape of the expressions prior (default 0.05)")
    opt.add_argument("--displacement-mm", type=float, default=None,
                     help="sensor: noise-equivalent skin displacement (default 0.5 mm)")
    opt.add_argument("--rotation-deg", type=float, default=None,
                     help="sensor: noise-equivalent skin rotation (default 0.2 deg)")
    opt.add_argument("--placement-mm", type=float, default=None,
                     help="rms in-skin placement error of an IMU (default 1.9 mm; 0 = none)")
    opt.add_argument("--skin-mm", type=float, default=None,
                     help="rms skin motion shared by neighbouring sites (default 0.5 mm; 0 = none)")
    opt.add_argument("--skin-length-mm", type=float, default=None,
                     help="correlation length of that shared skin motion (default 15 mm)")
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


def _objective(args: argparse.Namespace) -> tuple[Any, Any]:
    """(NoiseModel, WeightPrior) from the command line; bad values give one-line errors."""
    from imusic.placement.optimize import NoiseModel, WeightPrior

    given = {name: getattr(args, name) for name in
             ("displacement_mm", "rotation_deg", "placement_mm", "skin_mm", "skin_length_mm")}
    noise = NoiseModel(**{k: v for k, v in given.items() if v is not None})
    if args.prior == "flat":
        if args.prior_floor is not None:
            raise UserError("--prior-floor applies to --prior expressions only")
        return noise, WeightPrior.flat()
    return noise, WeightPrior.expressions(*(() if args.prior_floor is None else (args.prior_floor,)))


def _optimize(args: argparse.Namespace) -> int:
    from imusic.placement import IMUSIC_ZONES, load_catalogue, load_layout, list_layouts
    from imusic.placement.optimize import Problem, greedy_select

    if args.layout_name is not None and not args.layout_name.isidentifier():
        raise UserError(f"--layout-name {args.layout_name!r}: use letters, digits and underscores")
    noise, prior = _objective(args)
    exclude = [s.strip() for s in args.exclude.split(",") if s.strip()]
    catalogue = load_catalogue()
    problem = Problem([s for s in catalogue.sites.values() if not s.rigid], noise=noise, prior=prior)
    pick = greedy_select(args.k, catalogue=catalogue, problem=problem, exclude=exclude,
                         cover_zones=IMUSIC_ZONES if args.cover_zones else ())
    names = [s.name for s in problem.sites]
    layouts = {name: problem.summary([names.index(s) for s in load_layout(name).face_sites])
               for name in list_layouts()}
    result: dict[str, Any] = {"k": args.k, "pick": pick, "layouts": layouts}
    if args.layout_name:
        result["layout_yaml"] = layout_yaml(args.layout_name, pick["sites"])
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(report(pick, layouts))
    if args.layout_name:
        print(f"\n# layout {args.layout_name} (save as {args.layout_name}.yaml)\n{result['layout_yaml']}", end="")
    return 0


def report(pick: dict[str, Any], layouts: dict[str, dict[str, Any]]) -> str:
    """The optimiser's result as text: the pick, per-region and per-blendshape figures beside the layouts."""
    from imusic.arkit import BLENDSHAPES, REGIONS
    from imusic.placement.optimize import RESOLVED_EXPLAINED

    noise, prior = pick["noise"], pick["prior"]
    prior_text = (f"expression-data prior (floor sd {prior['floor_sd']})" if prior["name"] == "expressions"
                  else f"flat prior (sd {prior['sd']})")
    lines = [f"greedy pick of {len(pick['sites'])} face sites for information about the 52 weights",
             f"  {prior_text}; sensor {noise['displacement_mm']} mm / {noise['rotation_deg']} deg; placement "
             f"{noise['placement_mm']} mm rms; shared skin motion {noise['skin_mm']} mm over "
             f"{noise['skin_length_mm']} mm"]
    if pick["constrained_by"]:
        lines.append(f"constrained to cover: {', '.join(pick['constrained_by'])}")
    if pick["excluded"]:
        lines.append(f"excluded: {', '.join(pick['excluded'])}")
    for i, step in enumerate(pick["order"], 1):
        lines.append(f"  {i:>2}. {step['site']:<32} +{step['gain']:.2f} nats")
    lines.append(f"zones covered: {', '.join(pick['zones'])}")
    missing = pick["missing_imusic_zones"]
    lines.append("IMUSIC zones: all covered" if not missing else f"IMUSIC zones missed: {', '.join(missing)}")
    columns = {"pick": pick, **layouts}
    names = list(columns)
    w = 30  # label column

    def row(label: str, cells: list[str]) -> str:
        return f"{label:<{w}}" + "".join(f"{c:>10}" for c in cells)

    lines.append("")
    lines.append(row("", names))
    lines.append(row("face sites", [str(len(columns[n]["sites"])) for n in names]))
    lines.append(row("information (nats)", [f"{columns[n]['logdet']:.1f}" for n in names]))
    lines.append(row("resolved (of 52)", [str(columns[n]["resolved"]) for n in names]))
    lines.append(f"median share of each shape's variance explained, per region (resolved: >= {RESOLVED_EXPLAINED})")
    for region in REGIONS:
        lines.append(row(f"  {region}", [f"{columns[n]['regions'][region]['median_explained']:.2f}" for n in names]))
    lines.append("share of variance explained per blendshape (prior sd in brackets)")
    for shape in BLENDSHAPES:
        lines.append(row(f"  {shape} ({pick['prior_sd'][shape]:.2f})",
                         [f"{columns[n]['explained'][shape]:.2f}" for n in names]))
    return "\n".join(lines)
