"""The face-IMU simulator: expressions, face kinematics, head motion (this package's kinematic half)
and IMU physics, rigs and scenarios (the sensor half). Import the submodules you need; this package
file stays free of imports so `import imusic.sim.face` does not pull in the rest.

Frames and conventions: docs/sim.md.
"""
