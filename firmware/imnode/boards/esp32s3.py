"""ESP32-S3 (e.g. ESP32-S3-DevKitC-1): two I2C buses, UART1, Wi-Fi."""

from imnode.boards.common import (CONFIG_PATH, TICKS_PERIOD, boot_id, make_i2c, make_led, make_uart,  # noqa: F401
                                   mem_free, reset, serial, sleep_us, ticks_add, ticks_diff, ticks_us,
                                   unique_id, wdt_feed, wdt_start, wifi_udp)

NAME = "esp32s3"
I2C_PINS = ((8, 9), (17, 18))  # (sda, scl) of bus 0 and bus 1
N_I2C = len(I2C_PINS)
LED_PIN = 2
UART_ID = 1
UART_PINS = (43, 44)  # (tx, rx)


def i2c(bus):
    return make_i2c(I2C_PINS, bus)


def led(on):
    make_led(LED_PIN, on)


def uart(baud):
    return make_uart(UART_ID, UART_PINS, baud)


def udp(host, port, cfg):
    return wifi_udp(port, cfg)


def mcu_temp_c():
    # esp32.mcu_temperature() exists on the S2/S3/C3 builds of MicroPython 1.21 and later.
    import esp32
    read = getattr(esp32, "mcu_temperature", None)
    return read() if read is not None else None
