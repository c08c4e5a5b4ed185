"""Chip drivers: 6-axis IMUs (qmi8658, icm42688), magnetometer (qmc5883p), I2C multiplexer (tca9548a).

Every IMU driver has the same shape (docs/architecture.md, "Drivers contract") so the sampler never
asks which chip it talks to; detect.py finds which driver answers at which address.
"""
