"""Calibration of a rig: gyro bias, accelerometer and magnetometer fits, clock rate, neutral pose.

Each step is a library call on captured frames (``run_step``) and a guided CLI step (``imusic
calibrate STEP``); the results go to one JSON file per rig (``Calibration``), bound to the nodes'
uids and each IMU's identity, and a ``Session`` opened with ``calibration=`` applies it to every
frame. docs/calibration.md describes the steps, the maths and the file.
"""

from imusic.calibration.estimators import CalibrationError
from imusic.calibration.model import Calibration, CalibrationFileError, ImuIdentity, identity_of
from imusic.calibration.steps import STEPS, Capture, capture_recording, capture_session, run_step

__all__ = ["STEPS", "Calibration", "CalibrationError", "CalibrationFileError", "Capture", "ImuIdentity",
           "capture_recording", "capture_session", "identity_of", "run_step"]
