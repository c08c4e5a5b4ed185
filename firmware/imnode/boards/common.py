"""What every MicroPython board shares: clock, watchdog, reset, ids, heap, USB-CDC serial, the
I2C/LED/UART constructors and the Wi-Fi join. Board files import from here and add their pins."""

import gc
import os
import sys
import time

import machine
import micropython

CONFIG_PATH = "node.json"
TICKS_PERIOD = 1 << 30  # ticks_us wraps here on the ESP32 and RP2040 ports
ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add
sleep_us = time.sleep_us

I2C_FREQ = 400000
WIFI_TIMEOUT_MS = 15000

_buses = {}
_wdt = None
_led = None


def make_i2c(pins, bus):
    """Hardware I2C controller `bus` on pins[bus] = (sda, scl), made once."""
    if bus not in _buses:
        sda, scl = pins[bus]
        _buses[bus] = machine.I2C(bus, sda=machine.Pin(sda), scl=machine.Pin(scl), freq=I2C_FREQ)
    return _buses[bus]


def make_led(pin, on):
    """Drive the LED on `pin` (a number, or a name such as "LED" on the Pico W)."""
    global _led
    if _led is None:
        _led = machine.Pin(pin, machine.Pin.OUT)
    _led.value(1 if on else 0)


def make_uart(uart_id, pins, baud):
    tx, rx = pins
    port = machine.UART(uart_id, baudrate=baud, tx=machine.Pin(tx), rx=machine.Pin(rx), txbuf=4096, rxbuf=512)
    return port, port


def serial():
    """USB-CDC / REPL port as binary streams; Ctrl-C bytes in commands must not interrupt."""
    micropython.kbd_intr(-1)
    return sys.stdin.buffer, sys.stdout.buffer


def wifi_udp(port, cfg):
    """Join the configured Wi-Fi and return a non-blocking UDP socket bound to `port`, or None."""
    import network
    import socket

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


def wdt_start(timeout_ms):
    global _wdt
    _wdt = machine.WDT(timeout=timeout_ms)


def wdt_feed():
    if _wdt is not None:
        _wdt.feed()


def reset():
    machine.reset()


def unique_id():
    return machine.unique_id()


def boot_id():
    """A fresh random u32 each boot (hardware RNG): tells the host a restart from a repeat."""
    b = os.urandom(4)
    return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)


def mem_free():
    return gc.mem_free()
