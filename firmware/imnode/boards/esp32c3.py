"""ESP32-C3 (e.g. ESP32-C3-DevKitM-1): a single I2C controller, UART1, Wi-Fi."""

from imnode.boards.common import (CONFIG_PATH, TICKS_PERIOD, boot_id, make_i2c, make_led, make_uart,  # noqa: F401
                                   mem_free, reset, serial, sleep_us, ticks_add, ticks_diff, ticks_us,
                                   unique_id, wdt_feed, wdt_start, wifi_udp)
from imnode.boards.esp32s3 import mcu_temp_c  # noqa: F401  (same internal sensor API)

NAME = "esp32c3"
I2C_PINS = ((4, 5),)  # (sda, scl): the C3 has one I2C controller
N_I2C = len(I2C_PINS)
LED_PIN = 8
UART_ID = 1
UART_PINS = (21, 20)  # (tx, rx)


def i2c(bus):
    return make_i2c(I2C_PINS, bus)


def led(on):
    make_led(LED_PIN, on)


def uart(baud):
    return make_uart(UART_ID, UART_PINS, baud)


def udp(host, port, cfg):
    return wifi_udp(port, cfg)
