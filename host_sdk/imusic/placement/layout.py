"""Face sites and layouts: which site of the canonical face each IMU sits on, and how it is wired.

The catalogue (``catalogue.yaml``) lists candidate sites with their geometry in the face frame H
(origin between the tragi, x forward, y to the subject's left, z up, mm). A layout (``<name>.yaml``)
puts IMUs on catalogue sites and says which node, bus, multiplexer and channel each one uses. Both
live in ``hardware/placements/`` of the checkout, and in ``imusic/_placements`` of an installed
wheel. docs/placement.md describes the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imusic.arkit import INDEX
from imusic.errors import UserError, read_error

CATALOGUE_FILE = "catalogue.yaml"
CHIPS = ("qmi8658", "icm42688")
RATES_HZ = (60, 100, 200)  # what the firmware accepts (docs/firmware.md)
MAX_IMUS_PER_NODE = 16  # protocol limit
MAX_SITE_NAME = 63  # HELLO carries the site name as a str8 field
HEAD_REFERENCE_ZONE = "head_reference"
# The zones the IMUSIC paper puts its 11 face IMUs over.
IMUSIC_ZONES: tuple[str, ...] = ("frontalis", "orbicularis_oculi", "zygomaticus", "buccinator", "mentalis")
NORMAL_TOLERANCE = 2e-3  # |normal| may differ from 1 by this much (three decimals in the file)

_SITE_KEYS = ("position_mm", "normal", "muscle", "zone", "observes", "mounting", "rigid")
_LAYOUT_KEYS = ("name", "description", "rate_hz", "head_reference", "nodes")
_NODE_KEYS = ("node_id", "imus")
_IMU_KEYS = ("site", "bus", "mux", "channel", "chip", "mag", "reason")


class LayoutError(UserError):
    """A bad catalogue or layout file, an unknown site or layout: one line naming it."""


@dataclass(frozen=True, eq=False)
class Site:
    """One candidate site of the catalogue (geometry on the canonical face, in H)."""

    name: str
    position_mm: np.ndarray  # (3,)
    normal: np.ndarray  # (3,) unit outward skin normal
    muscle: str
    zone: str
    observes: tuple[str, ...]  # ARKit names
    mounting: str
    rigid: bool


@dataclass(frozen=True)
class LayoutImu:
    """One IMU of a layout: the site it sits on and where it is wired."""

    node_id: int
    slot: int  # index in the node's imus list (the node.json order, the HELLO order)
    site: str
    bus: int
    mux: int | None  # TCA9548A address, or None without a multiplexer
    channel: int | None
    chip: str
    mag: bool  # a QMC5883P beside it
    reason: str


def placements_dir() -> Path:
    """Where the layout files are: the installed package's data first, then the source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "_placements", here.parents[3] / "hardware" / "placements"):
        if (candidate / CATALOGUE_FILE).is_file():
            return candidate
    raise LayoutError("placement files not found: no imusic/_placements in the package and no "
                      "hardware/placements in the checkout")


def _read_yaml(path: Path, what: str) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise read_error(path, exc, what, LayoutError) from None
    except UnicodeDecodeError:
        raise LayoutError(f"{path}: not a text file (expected {what})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise LayoutError(f"{path}: not valid YAML{where}: {problem}") from None


def _vector(value: Any, where: str) -> np.ndarray:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise LayoutError(f"{where} must be a list of three numbers, not {value!r}")
    return np.array(value, dtype=float)


def _check_keys(data: Any, known: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    if not isinstance(data, dict):
        raise LayoutError(f"{where} must be a mapping")
    unknown = [k for k in data if k not in known]
    if unknown:
        raise LayoutError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(known)})")
    missing = [k for k in required if k not in data]
    if missing:
        raise LayoutError(f"{where}: missing field {missing[0]!r}")


def _site(name: Any, data: Any, path: Path) -> Site:
    where = f"{path}: site {name!r}"
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower() or len(name) > MAX_SITE_NAME:
        raise LayoutError(f"{path}: site name {name!r} must be snake_case, at most {MAX_SITE_NAME} characters")
    _check_keys(data, _SITE_KEYS, _SITE_KEYS, where)
    position_mm = _vector(data["position_mm"], f"{where} position_mm")
    normal = _vector(data["normal"], f"{where} normal")
    length = float(np.linalg.norm(normal))
    if abs(length - 1.0) > NORMAL_TOLERANCE:
        raise LayoutError(f"{where}: normal must be a unit vector (its length is {length:.4f})")
    for key in ("muscle", "zone", "mounting"):
        if not isinstance(data[key], str) or not data[key]:
            raise LayoutError(f"{where}: {key} must be a non-empty string")
    observes = data["observes"]
    if not isinstance(observes, list):
        raise LayoutError(f"{where}: observes must be a list of ARKit blendshape names")
    for shape in observes:
        if shape not in INDEX:
            raise LayoutError(f"{where}: {shape!r} is not an ARKit blendshape name")
    if not isinstance(data["rigid"], bool):
        raise LayoutError(f"{where}: rigid must be true or false")
    return Site(name=name, position_mm=position_mm, normal=normal / length, muscle=data["muscle"],
                zone=data["zone"], observes=tuple(observes), mounting=data["mounting"], rigid=data["rigid"])


class Catalogue:
    """Candidate face sites by name (file order)."""

    def __init__(self, sites: dict[str, Site], path: Path) -> None:
        self.sites = sites
        self.path = path

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise LayoutError(f"unknown site {name!r}: not in {self.path}") from None

    def zones(self) -> list[str]:
        """Zones in first-appearance order."""
        return list(dict.fromkeys(s.zone for s in self.sites.values()))

    def __len__(self) -> int:
        return len(self.sites)


_catalogues: dict[Path, Catalogue] = {}


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The site catalogue: `path`, or catalogue.yaml of the placement files (cached per file)."""
    file = Path(path) if path is not None else placements_dir() / CATALOGUE_FILE
    key = file.resolve()
    if key in _catalogues:
        return _catalogues[key]
    data = _read_yaml(file, "a site catalogue")
    _check_keys(data, ("frame", "units", "sites"), ("sites",), f"{file}")
    if data.get("frame", "H") != "H" or data.get("units", "mm") != "mm":
        raise LayoutError(f"{file}: positions must be in frame H, in mm")
    raw = data["sites"]
    if not isinstance(raw, dict) or not raw:
        raise LayoutError(f"{file}: sites must be a non-empty mapping of site name -> fields")
    catalogue = Catalogue({name: _site(name, fields, file) for name, fields in raw.items()}, file)
    _catalogues[key] = catalogue
    return catalogue


class Layout:
    """IMUs on catalogue sites, wired to nodes. ``imus`` is in frame order (node id, then slot),
    the order of ``Frame.sites``."""

    def __init__(self, name: str, description: str, rate_hz: int, imus: tuple[LayoutImu, ...],
                 head_reference: str, catalogue: Catalogue, path: Path) -> None:
        self.name = name
        self.description = description
        self.rate_hz = rate_hz
        self.imus = tuple(sorted(imus, key=lambda i: (i.node_id, i.slot)))
        self.head_reference = head_reference
        self.catalogue = catalogue
        self.path = path
        self.sites: tuple[str, ...] = tuple(i.site for i in self.imus)
        self.face_sites: tuple[str, ...] = tuple(s for s in self.sites if s != head_reference)
        self.node_ids: tuple[int, ...] = tuple(sorted({i.node_id for i in self.imus}))

    def site(self, name: str) -> Site:
        """Catalogue geometry of a site of this layout."""
        if name not in self.sites:
            raise LayoutError(f"site {name!r} is not in layout {self.name!r}")
        return self.catalogue.site(name)

    def imu(self, site: str) -> LayoutImu:
        for imu in self.imus:
            if imu.site == site:
                return imu
        raise LayoutError(f"site {site!r} is not in layout {self.name!r}")

    def node_imus(self, node_id: int) -> list[LayoutImu]:
        imus = [i for i in self.imus if i.node_id == node_id]
        if not imus:
            raise LayoutError(f"layout {self.name!r} has no node {node_id} (nodes: "
                              f"{', '.join(map(str, self.node_ids))})")
        return imus

    def emulator_imus(self, node_id: int) -> list[dict[str, Any]]:
        """``EmulatedNode(imus=...)`` entries for one node, in slot order."""
        return [{"bus": i.bus, "mux": i.mux, "channel": i.channel, "chip": i.chip, "addr": None, "mag": i.mag,
                 "site": i.site} for i in self.node_imus(node_id)]

    def node_config(self, node_id: int, rate_hz: int | None = None, link: dict[str, Any] | None = None,
                    board: str | None = None) -> dict[str, Any]:
        """The node.json for one node of this layout (docs/firmware.md). `link` defaults to USB serial;
        `board` is left out (the platform's default) unless given."""
        config: dict[str, Any] = {"node_id": node_id}
        if board is not None:
            config["board"] = board
        config["rate_hz"] = self.rate_hz if rate_hz is None else rate_hz
        config["imus"] = [{"bus": i.bus, "mux": i.mux, "channel": i.channel, "site": i.site, "chip": i.chip}
                          for i in self.node_imus(node_id)]
        config["link"] = dict(link) if link is not None else {"type": "serial"}
        config["autostart"] = True
        return config

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, {len(self.imus)} IMUs on nodes {self.node_ids})"


def list_layouts() -> list[str]:
    """Names of the layouts shipped with imusic."""
    return sorted(p.stem for p in placements_dir().glob("*.yaml") if p.name != CATALOGUE_FILE)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layout_imu(item: Any, node_id: int, slot: int, catalogue: Catalogue, path: Path) -> LayoutImu:
    where = f"{path}: node {node_id} imus[{slot}]"
    _check_keys(item, _IMU_KEYS, ("site", "bus"), where)
    site = item["site"]
    if not isinstance(site, str) or site not in catalogue.sites:
        raise LayoutError(f"{path}: unknown site {site!r} (node {node_id} imus[{slot}]); "
                          f"`imusic placement list --markdown` lists the catalogue")
    bus, mux, channel = item["bus"], item.get("mux"), item.get("channel")
    if not (_is_int(bus) and bus in (0, 1)):
        raise LayoutError(f"{where} ({site}): bus must be 0 or 1, not {bus!r}")
    if mux is None:
        if channel is not None:
            raise LayoutError(f"{where} ({site}): a channel needs a mux")
    elif not (_is_int(mux) and 0x70 <= mux <= 0x77 and _is_int(channel) and 0 <= channel <= 7):
        raise LayoutError(f"{where} ({site}): mux must be 0x70..0x77 with a channel 0..7 "
                          f"(got mux {mux!r}, channel {channel!r})")
    chip = item.get("chip", "qmi8658")
    if chip not in CHIPS:
        raise LayoutError(f"{where} ({site}): chip must be one of {', '.join(CHIPS)}, not {chip!r}")
    mag = item.get("mag", False)
    reason = item.get("reason", "")
    if not isinstance(mag, bool) or not isinstance(reason, str):
        raise LayoutError(f"{where} ({site}): mag must be true/false and reason a string")
    return LayoutImu(node_id=node_id, slot=slot, site=site, bus=bus, mux=mux, channel=channel, chip=chip,
                     mag=mag, reason=reason)


def _parse_layout(data: Any, path: Path, catalogue: Catalogue) -> Layout:
    _check_keys(data, _LAYOUT_KEYS, ("head_reference", "nodes"), str(path))
    name = data.get("name", path.stem)
    description = data.get("description", "")
    rate_hz = data.get("rate_hz", 60)
    if not isinstance(name, str) or not isinstance(description, str):
        raise LayoutError(f"{path}: name and description must be strings")
    if rate_hz not in RATES_HZ or not _is_int(rate_hz):
        raise LayoutError(f"{path}: rate_hz must be one of {', '.join(map(str, RATES_HZ))}, not {rate_hz!r}")
    nodes = data["nodes"]
    if not isinstance(nodes, list) or not nodes:
        raise LayoutError(f"{path}: nodes must be a non-empty list")
    imus: list[LayoutImu] = []
    for n, node in enumerate(nodes):
        _check_keys(node, _NODE_KEYS, _NODE_KEYS, f"{path}: nodes[{n}]")
        node_id = node["node_id"]
        if not (_is_int(node_id) and 0 <= node_id <= 254):
            raise LayoutError(f"{path}: nodes[{n}]: node_id must be 0..254, not {node_id!r}")
        if any(i.node_id == node_id for i in imus):
            raise LayoutError(f"{path}: node {node_id} is listed twice")
        items = node["imus"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_IMUS_PER_NODE:
            raise LayoutError(f"{path}: node {node_id}: imus must list 1..{MAX_IMUS_PER_NODE} IMUs")
        wiring: dict[tuple[int, int | None, int | None], str] = {}
        for slot, item in enumerate(items):
            imu = _layout_imu(item, node_id, slot, catalogue, path)
            key = (imu.bus, imu.mux, imu.channel)
            if key in wiring:
                where = f"bus {imu.bus}" + (f" mux 0x{imu.mux:02x} channel {imu.channel}" if imu.mux is not None else "")
                raise LayoutError(f"{path}: node {node_id}: {imu.site} and {wiring[key]} are both on {where}")
            wiring[key] = imu.site
            imus.append(imu)
    seen: set[str] = set()
    for imu in imus:
        if imu.site in seen:
            raise LayoutError(f"{path}: site {imu.site!r} has two IMUs")
        seen.add(imu.site)
    head = data["head_reference"]
    if not isinstance(head, str) or head not in seen:
        raise LayoutError(f"{path}: head_reference {head!r} must name one of the layout's sites")
    if not catalogue.site(head).rigid:
        raise LayoutError(f"{path}: head_reference {head!r} is not a rigid (bone) site in the catalogue")
    return Layout(name, description, rate_hz, tuple(imus), head, catalogue, path)


def load_layout(name_or_path: str | Path, catalogue: Catalogue | None = None) -> Layout:
    """A layout by name (``imusic``, ``compact``, ``minimal``, ...) or from a .yaml file. Sites are
    looked up in `catalogue` (default: the shipped catalogue)."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text or "\\" in text:
        path = Path(text)
    else:
        names = list_layouts()
        if text not in names:
            raise LayoutError(f"unknown layout {text!r}: choose one of {', '.join(names)} or give a .yaml file")
        path = placements_dir() / f"{text}.yaml"
    if catalogue is None:
        catalogue = load_catalogue()
    data = _read_yaml(path, "a layout")
    return _parse_layout(data, path, catalogue)
