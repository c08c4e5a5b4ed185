"""Raspberry Pi Pico (RP2040): I2C0 and I2C1, UART0, no radio."""

import gc
import os
import sys
import time

import machine
import micropython

NAME = "rp2040"
CONFIG_PATH = "node.json"
TICKS_PERIOD = 1 << 30
ticks_us = time.ticks_us
ticks_diff = time.ticks_diff
ticks_add = time.ticks_add
sleep_us = time.sleep_us

I2C_FREQ = 400000
I2C_PINS = ((4, 5), (6, 7))  # (sda, scl) of I2C0 and I2C1
N_I2C = len(I2C_PINS)
LED_PIN = 25
UART_ID = 0
UART_PINS = (0, 1)  # (tx, rx)

_buses = {}
_wdt = None
_led = None


def i2c(bus):
    if bus not in _buses:
        sda, scl = I2C_PINS[bus]
        _buses[bus] = machine.I2C(bus, sda=machine.Pin(sda), scl=machine.Pin(scl), freq=I2C_FREQ)
    return _buses[bus]


def make_led(pin, on):
    global _led
    if _led is None:
        _led = machine.Pin(pin, machine.Pin.OUT)
    _led.value(1 if on else 0)


def led(on):
    make_led(LED_PIN, on)


def serial():
    """USB-CDC / REPL port as binary streams; Ctrl-C bytes in commands must not interrupt."""
    micropython.kbd_intr(-1)
    return sys.stdin.buffer, sys.stdout.buffer


def uart(baud):
    tx, rx = UART_PINS
    port = machine.UART(UART_ID, baudrate=baud, tx=machine.Pin(tx), rx=machine.Pin(rx), txbuf=4096, rxbuf=512)
    return port, port


def udp(host, port, cfg):
    return None  # no radio


def wdt_start(timeout_ms):
    global _wdt
    # The RP2040 watchdog cannot count past 8.3 s.
    _wdt = machine.WDT(timeout=min(timeout_ms, 8300))


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


def mcu_temp_c():
    # Internal sensor on ADC input 4: 27 degC at 0.706 V, -1.721 mV/degC (RP2040 datasheet).
    volts = machine.ADC(4).read_u16() * 3.3 / 65535
    return 27 - (volts - 0.706) / 0.001721
