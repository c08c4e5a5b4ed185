"""Raspberry Pi Pico W: the RP2040 board plus the CYW43 radio (Wi-Fi, and the LED behind it)."""

from imnode.boards.common import make_led, wifi_udp
from imnode.boards.rp2040 import (CONFIG_PATH, I2C_PINS, N_I2C, TICKS_PERIOD, boot_id, i2c, mcu_temp_c,  # noqa: F401
                                  mem_free, reset, serial, sleep_us, ticks_add, ticks_diff, ticks_us, uart,
                                  unique_id, wdt_feed, wdt_start)

NAME = "picow"


def led(on):
    make_led("LED", on)  # the LED hangs off the radio chip, addressed by name


def udp(host, port, cfg):
    return wifi_udp(port, cfg)
