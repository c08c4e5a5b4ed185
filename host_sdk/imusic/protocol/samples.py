"""The numpy path for SAMPLES payloads, shared by the stream decoder (one frame) and the bulk path
(many frames of one shape). Offsets and dtypes come from ``messages``/``constants``, the layout's
single definition; tests check this path against the construct definition ``SamplesLayout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from imusic.protocol.constants import (
    AXES,
    MAX_IMUS,
    MAX_SAMPLES_PER_FRAME,
    SAMPLES_HEADER_SIZE,
    VALUES_6AXIS,
    VALUES_9AXIS,
    StatusBit,
)
from imusic.protocol.messages import SAMPLE_VALUE_DTYPE

# bytes.translate table: a status byte -> 1 when it has HAS_MAG, else 0.
HAS_MAG_TABLE = bytes(1 if b & StatusBit.HAS_MAG else 0 for b in range(256))


@dataclass(frozen=True)
class SampleShape:
    """Where each wire value of one instant lands in an (n_imus, 9) accel|gyro|mag record."""

    n_imus: int
    mag_bits: bytes  # per IMU slot: 1 when it has HAS_MAG
    values_per_instant: int  # int16 values of one instant on the wire, all IMUs
    six_axis_only: bool
    # index into the flattened (n_imus * 9) record of each wire value of one instant
    record_index: np.ndarray = field(compare=False, repr=False)

    def payload_size(self, n_samples: int) -> int:
        return SAMPLES_HEADER_SIZE + self.n_imus + 2 * n_samples * self.values_per_instant


@lru_cache(maxsize=4096)
def sample_shape(n_imus: int, mag_bits: bytes) -> SampleShape:
    index = []
    for slot, has_mag in enumerate(mag_bits):
        width = VALUES_9AXIS if has_mag else VALUES_6AXIS
        index.extend(slot * VALUES_9AXIS + v for v in range(width))
    return SampleShape(
        n_imus=n_imus,
        mag_bits=mag_bits,
        values_per_instant=len(index),
        six_axis_only=not any(mag_bits),
        record_index=np.asarray(index, dtype=np.intp),
    )


@lru_cache(maxsize=1024)
def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    z = np.zeros(shape, dtype=np.int16)
    z.flags.writeable = False
    return z


def split_values(values: np.ndarray, shape: SampleShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 (..., values_per_instant) wire values -> accel, gyro, mag each (..., n_imus, 3)."""
    lead = values.shape[:-1]
    if shape.six_axis_only:
        rec = values.reshape(*lead, shape.n_imus, VALUES_6AXIS)
        return rec[..., 0:AXES], rec[..., AXES:2 * AXES], _zeros((*lead, shape.n_imus, AXES))
    rec = np.zeros((*lead, shape.n_imus * VALUES_9AXIS), dtype=np.int16)
    rec[..., shape.record_index] = values
    rec = rec.reshape(*lead, shape.n_imus, VALUES_9AXIS)
    rec.flags.writeable = False
    return rec[..., 0:AXES], rec[..., AXES:2 * AXES], rec[..., 2 * AXES:3 * AXES]


def shape_error(n_samples: int, n_imus: int) -> bool:
    """True when the counts break the spec's ranges (a malformed payload)."""
    return not (1 <= n_samples <= MAX_SAMPLES_PER_FRAME) or n_imus > MAX_IMUS


def values_view(payload: bytes, n_samples: int, shape: SampleShape) -> np.ndarray:
    """The int16 values of a SAMPLES payload as (n_samples, values_per_instant), no copy."""
    count = n_samples * shape.values_per_instant
    data = np.frombuffer(payload, dtype=SAMPLE_VALUE_DTYPE, count=count, offset=SAMPLES_HEADER_SIZE + shape.n_imus)
    return data.reshape(n_samples, shape.values_per_instant)
