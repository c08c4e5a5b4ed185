"""Raspberry Pi Pico (RP2040): I2C0 and I2C1, UART0, no radio."""

import machine

from imnode.boards import common
from imnode.boards.common import (CONFIG_PATH, TICKS_PERIOD, boot_id, make_i2c, make_led, make_uart,  # noqa: F401
                                   mem_free, reset, serial, sleep_us, ticks_add, ticks_diff, ticks_us,
                                   unique_id, wdt_feed)

NAME = "rp2040"
I2C_PINS = ((4, 5), (6, 7))  # (sda, scl) of I2C0 and I2C1
N_I2C = len(I2C_PINS)
LED_PIN = 25
UART_ID = 0
UART_PINS = (0, 1)  # (tx, rx)
WDT_MAX_MS = 8300  # the RP2040 watchdog cannot count past 8.3 s


def i2c(bus):
    return make_i2c(I2C_PINS, bus)


def led(on):
    make_led(LED_PIN, on)


def uart(baud):
    return make_uart(UART_ID, UART_PINS, baud)


def udp(host, port, cfg):
    return None  # no radio


def wdt_start(timeout_ms):
    common.wdt_start(min(timeout_ms, WDT_MAX_MS))


def mcu_temp_c():
    # Internal sensor on ADC input 4: 27 degC at 0.706 V, -1.721 mV/degC (RP2040 datasheet).
    volts = machine.ADC(4).read_u16() * 3.3 / 65535
    return 27 - (volts - 0.706) / 0.001721
