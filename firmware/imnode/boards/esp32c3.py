"""ESP32-C3 (e.g. ESP32-C3-DevKitM-1): one I2C controller, UART1, Wi-Fi."""

from imnode.boards.esp32 import (CONFIG_PATH, TICKS_PERIOD, make_i2c, make_led, make_uart, mem_free,  # noqa: F401
                                 boot_id, reset, serial, sleep_us, ticks_add, ticks_diff, ticks_us, udp, unique_id,
                                 wdt_feed, wdt_start)

NAME = "esp32c3"
I2C_PINS = ((4, 5),)  # (sda, scl): the C3 has a single I2C controller
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


def mcu_temp_c():
    # esp32.mcu_temperature() exists on the S2/S3/C3 builds of MicroPython 1.21 and later.
    import esp32
    read = getattr(esp32, "mcu_temperature", None)
    return read() if read is not None else None
