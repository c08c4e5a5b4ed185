"""node.json: the node's settings (format in docs/firmware.md and node.json.example).

A missing or unreadable file, or a bad field, never stops the node: each problem becomes a
message (sent as LOG once the link is up) and the field keeps its safe default. With no usable
`imus` list the sampler scans every bus for IMUs.
"""

import json

from imnode import proto

BOARDS = ("esp32", "esp32s3", "esp32c3", "rp2040", "picow", "emulated")
CHIPS = ("auto", "qmi8658", "icm42688")
LINKS = ("serial", "uart", "udp", "file")
DEFAULT_UDP_PORT = 50100
DEFAULT_BAUD = 921600
KNOWN = ("node_id", "board", "rate_hz", "samples_per_frame", "imus", "accel_range_g", "gyro_range_dps",
         "mag_range_gauss", "link", "wifi", "autostart")
IMU_KNOWN = ("bus", "mux", "channel", "site", "chip", "addr")
LINK_KNOWN = ("type", "baud", "host", "port", "path")


class ImuSpec:
    """One configured IMU slot: where the chip sits and what is expected there."""

    def __init__(self, bus, mux, channel, site, chip, addr):
        self.bus = bus
        self.addr = addr  # 7-bit chip address, or None: the first chip that answers
        self.mux = mux  # 7-bit TCA9548A address or None
        self.channel = channel  # 0..7, or None without a mux
        self.site = site
        self.chip = chip  # one of CHIPS


class Config:
    def __init__(self):
        self.node_id = 1
        self.board = None  # None: the platform's default board
        self.rate_hz = 100
        self.samples_per_frame = None  # None: rate_hz // 50 (at least 1)
        self.imus = None  # None: scan the buses
        self.accel_range_g = 8
        self.gyro_range_dps = None  # None: each chip's default (QMI8658 512, ICM-42688-P 500)
        self.mag_range_gauss = 8
        self.link_type = "serial"
        self.baud = DEFAULT_BAUD
        self.host = None  # UDP: None means announce and wait for a host
        self.port = DEFAULT_UDP_PORT
        self.path = "stream.bin"  # file link (emulation)
        self.wifi_ssid = None
        self.wifi_password = None
        self.autostart = True
        self.problems = []  # (LOG level, text)

    def _warn(self, text):
        self.problems.append((proto.LOG_WARNING, "config: " + text))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _pick(cfg, data, name, ok, default_text):
    """data[name] when ok(value), else a warning and the default stays."""
    if name not in data:
        return None
    v = data[name]
    if ok(v):
        return v
    cfg._warn("bad %s %r: using %s" % (name, v, default_text))
    return None


def load(path):
    """Read node.json at `path` into a Config; never raises for bad content."""
    cfg = Config()
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        cfg.problems.append((proto.LOG_INFO, "config: no %s: using defaults" % path))
        return cfg
    try:
        data = json.loads(text)
    except (ValueError, MemoryError):
        cfg.problems.append((proto.LOG_ERROR, "config: %s is not valid JSON: using defaults" % path))
        return cfg
    if not isinstance(data, dict):
        cfg.problems.append((proto.LOG_ERROR, "config: %s must hold a JSON object: using defaults" % path))
        return cfg
    apply(cfg, data)
    return cfg


def apply(cfg, data):
    for name in data:
        if name not in KNOWN:
            cfg._warn("unknown field %r ignored" % name)

    v = _pick(cfg, data, "node_id", lambda v: _is_int(v) and 0 <= v <= 254, str(cfg.node_id))
    if v is not None:
        cfg.node_id = v
    v = _pick(cfg, data, "board", lambda v: v in BOARDS, "the platform default")
    if v is not None:
        cfg.board = v
    v = _pick(cfg, data, "rate_hz", lambda v: _is_int(v) and v in proto.RATES_HZ, str(cfg.rate_hz))
    if v is not None:
        cfg.rate_hz = v
    v = _pick(cfg, data, "samples_per_frame",
              lambda v: _is_int(v) and 1 <= v <= proto.MAX_SAMPLES_PER_FRAME, "rate_hz // 50")
    if v is not None:
        cfg.samples_per_frame = v
    v = _pick(cfg, data, "accel_range_g", lambda v: v in proto.ACCEL_RANGES_G, str(cfg.accel_range_g))
    if v is not None:
        cfg.accel_range_g = v
    v = _pick(cfg, data, "gyro_range_dps", lambda v: _is_int(v) and 16 <= v <= 2048, "each chip's default")
    if v is not None:
        cfg.gyro_range_dps = v
    v = _pick(cfg, data, "mag_range_gauss", lambda v: v in proto.MAG_RANGES_GAUSS, str(cfg.mag_range_gauss))
    if v is not None:
        cfg.mag_range_gauss = v
    v = _pick(cfg, data, "autostart", lambda v: isinstance(v, bool), "true")
    if v is not None:
        cfg.autostart = v
    if "imus" in data:
        _apply_imus(cfg, data["imus"])
    if "link" in data:
        _apply_link(cfg, data["link"])
    if "wifi" in data:
        w = data["wifi"]
        if isinstance(w, dict) and isinstance(w.get("ssid"), str) and isinstance(w.get("password", ""), str):
            cfg.wifi_ssid = w["ssid"]
            cfg.wifi_password = w.get("password", "")
        else:
            cfg._warn("bad wifi (needs ssid and password strings): Wi-Fi off")


def _apply_imus(cfg, imus):
    if not isinstance(imus, list):
        cfg._warn("imus must be a list: scanning the buses")
        return
    specs = []
    for i, item in enumerate(imus):
        spec = _imu_spec(cfg, i, item)
        if spec is not None:
            specs.append(spec)
    if len(specs) > proto.MAX_IMUS:
        cfg._warn("%d imus: keeping the first %d" % (len(specs), proto.MAX_IMUS))
        specs = specs[:proto.MAX_IMUS]
    if specs:
        cfg.imus = specs
    else:
        cfg._warn("no usable entry in imus: scanning the buses")


def _imu_spec(cfg, i, item):
    if not isinstance(item, dict):
        cfg._warn("imus[%d] is not an object: skipped" % i)
        return None
    for name in item:
        if name not in IMU_KNOWN:
            cfg._warn("imus[%d]: unknown field %r ignored" % (i, name))
    bus = item.get("bus", 0)
    mux = item.get("mux")
    channel = item.get("channel")
    site = item.get("site", "imu%d" % i)
    chip = item.get("chip", "auto")
    addr = item.get("addr")
    if addr is not None and not (_is_int(addr) and 0x08 <= addr <= 0x77):
        cfg._warn("imus[%d]: bad addr %r: probing" % (i, addr))
        addr = None
    if not (_is_int(bus) and 0 <= bus <= 1):
        cfg._warn("imus[%d]: bad bus %r: skipped" % (i, bus))
        return None
    if mux is not None:
        if not (_is_int(mux) and 0x70 <= mux <= 0x77):
            cfg._warn("imus[%d]: bad mux %r (0x70..0x77 or null): skipped" % (i, mux))
            return None
        if not (isinstance(channel, int) and not isinstance(channel, bool) and 0 <= channel <= 7):
            cfg._warn("imus[%d]: bad channel %r (0..7): skipped" % (i, channel))
            return None
    else:
        channel = None
    if not isinstance(site, str):
        cfg._warn("imus[%d]: bad site %r: using imu%d" % (i, site, i))
        site = "imu%d" % i
    if chip not in CHIPS:
        cfg._warn("imus[%d]: bad chip %r: using auto" % (i, chip))
        chip = "auto"
    return ImuSpec(bus, mux, channel, site, chip, addr)


def _apply_link(cfg, link):
    if not isinstance(link, dict):
        cfg._warn("link must be an object: using serial")
        return
    for name in link:
        if name not in LINK_KNOWN:
            cfg._warn("link: unknown field %r ignored" % name)
    t = link.get("type", "serial")
    if t not in LINKS:
        cfg._warn("link: bad type %r: using serial" % (t,))
        return
    cfg.link_type = t
    baud = link.get("baud", DEFAULT_BAUD)
    if _is_int(baud) and 1200 <= baud <= 4000000:
        cfg.baud = baud
    else:
        cfg._warn("link: bad baud %r: using %d" % (baud, DEFAULT_BAUD))
    host = link.get("host")
    if host is None or isinstance(host, str):
        cfg.host = host or None
    else:
        cfg._warn("link: bad host %r: waiting for a host" % (host,))
    port = link.get("port", DEFAULT_UDP_PORT)
    if _is_int(port) and 1 <= port <= 65535:
        cfg.port = port
    else:
        cfg._warn("link: bad port %r: using %d" % (port, DEFAULT_UDP_PORT))
    path = link.get("path")
    if isinstance(path, str) and path:
        cfg.path = path
