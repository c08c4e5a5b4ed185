"""``emu://?imus=11&rate=100&...``: start an emulated node (the real firmware under MicroPython) on a
pty and open that pty as a serial link; closing the link stops the node.

Parameters (all optional): ``imus`` (1..16, default 11), ``rate`` (60, 100, 200; default 100),
``node_id`` (default 1), ``seed`` (default 1), and the emulation knobs of ``imusic emulate-node``:
``drift_ppm``, ``offset_us``, ``delay_ms``, ``jitter_ms``, ``loss``, ``reboot_after`` (seconds).
"""

from __future__ import annotations

from typing import Any

from imusic.errors import UserError
from imusic.links import LinkError, ParsedUrl, register_scheme
from imusic.links.serial import DEFAULT_BAUD, SerialLink

PARAMS = ("imus", "rate", "node_id", "seed", "drift_ppm", "offset_us", "delay_ms", "jitter_ms", "loss",
          "reboot_after")


class EmuLink(SerialLink):
    """A serial link to an emulated node this link started; ``node`` is its ``EmulatedNode``."""

    def __init__(self, url: str, node: Any) -> None:
        self.node = node
        try:
            super().__init__(url, node.pty_path, DEFAULT_BAUD)
        except BaseException:
            node.stop()
            raise
        # Received.source is the URL the user gave, as for any serial link.

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.node.stop()


def _open(parsed: ParsedUrl) -> EmuLink:
    from imusic.emulation.launcher import MAX_OFFSET_US, EmulatedNode

    parsed.check_params(PARAMS)
    if parsed.target not in ("", "localhost"):
        raise LinkError(f"{parsed.url}: emu:// takes only parameters (emu://?imus=11&rate=100)")
    rate = parsed.int_param("rate", 100, 1, 1000)
    if rate not in (60, 100, 200):
        raise LinkError(f"{parsed.url}: rate must be 60, 100 or 200, not {rate}")
    reboot_after = parsed.float_param("reboot_after", 0.0, 0.0, 1e9)
    kwargs: dict[str, Any] = dict(
        imus=parsed.int_param("imus", 11, 1, 16),
        rate_hz=rate,
        node_id=parsed.int_param("node_id", 1, 0, 254),
        seed=parsed.int_param("seed", 1, 0, (1 << 31) - 1),
        drift_ppm=parsed.int_param("drift_ppm", 0, -100_000, 100_000),
        offset_us=parsed.int_param("offset_us", 0, 0, MAX_OFFSET_US),
        delay_ms=parsed.float_param("delay_ms", 0.0, 0.0, 10_000.0),
        jitter_ms=parsed.float_param("jitter_ms", 0.0, 0.0, 10_000.0),
        loss=parsed.float_param("loss", 0.0, 0.0, 1.0),
        reboot_after_s=reboot_after or None,
        link="pty",
        clock="realtime",
    )
    try:
        node = EmulatedNode(**kwargs).start()
    except UserError as exc:
        raise LinkError(f"{parsed.url}: {exc}") from None
    return EmuLink(parsed.url, node)


register_scheme("emu", _open)
