"""Raspberry Pi Pico W: the RP2040 board plus the CYW43 radio (Wi-Fi, and the LED behind it)."""

import time

import machine
import network
import socket

from imnode.boards.rp2040 import (CONFIG_PATH, I2C_PINS, N_I2C, TICKS_PERIOD, i2c, make_led, mcu_temp_c,  # noqa: F401
                                  mem_free, reset, serial, sleep_us, ticks_add, ticks_diff, ticks_us, uart,
                                  unique_id, boot_id, wdt_feed, wdt_start)

NAME = "picow"
WIFI_TIMEOUT_MS = 15000
_led = None


def led(on):
    global _led
    if _led is None:
        _led = machine.Pin("LED", machine.Pin.OUT)
    _led.value(1 if on else 0)


def udp(host, port, cfg):
    """Join the configured Wi-Fi and return a non-blocking UDP socket, or None."""
    if not cfg.wifi_ssid:
        return None
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(cfg.wifi_ssid, cfg.wifi_password)
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > WIFI_TIMEOUT_MS:
                return None
            time.sleep_ms(100)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock
