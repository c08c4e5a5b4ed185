"""Calibration steps on captured data: collect frames, run an estimator per IMU, store the results.

A ``Capture`` is what one step needs: the raw (uncalibrated) frames of every IMU, the nodes' HELLOs
(identity, ranges, rates), the node temperatures from STATUS and the clock fits. It comes from a
live session (``capture_session``) or from a recording (``capture_recording``).

``run_step(step, capture, calibration)`` runs every IMU's estimator first and changes the
calibration only when all of them succeeded: a refused step (``CalibrationError`` naming the step
and the IMU) leaves it, and the file it came from, as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imusic.align import Frame, FrameBlock
from imusic.calibration.estimators import (
    DEG, STANDARD_GRAVITY, CalibrationError, accel_fit, accel_refine_rotating, gyro_bias, gyro_scale_from_turns,
    mag_fit, matrix_to_quat, neutral_rotation, relative_accel_alignment, relative_gyro_gain, saturation_check,
    static_segments, still_thresholds,
)
from imusic.calibration.model import Calibration, ImuIdentity, chip_name, identity_of
from imusic.errors import UserError
from imusic.protocol import Hello, Status

__all__ = ["Capture", "STEPS", "capture_recording", "capture_session", "run_step"]

STEPS = ("gyro", "accel", "mag", "clock", "neutral")
UNKNOWN_TEMP = -32768
UT_PER_GAUSS = 100.0


@dataclass
class Capture:
    """Raw frames of one calibration capture and what the nodes said about themselves."""

    block: FrameBlock
    hellos: dict[int, Hello]  # by node id
    temps_c: dict[int, float | None] = field(default_factory=dict)  # mean STATUS temperature per node
    drift_ppm: dict[int, float | None] = field(default_factory=dict)  # clock fit per node
    clock_points: dict[int, int] = field(default_factory=dict)
    source: str = ""
    rate_hz: float = 60.0

    @property
    def seconds(self) -> float:
        t = self.block.t_host_s
        return float(t[-1] - t[0]) if len(t) > 1 else 0.0

    def imus(self) -> list[tuple[int, ImuIdentity, Hello, int]]:
        """(frame index, identity, HELLO, slot) of every IMU in frame order."""
        out = []
        slot_of: dict[int, int] = {}
        for i, node_id in enumerate(self.block.node_ids):
            slot = slot_of.get(node_id, 0)
            slot_of[node_id] = slot + 1
            hello = self.hellos.get(node_id)
            if hello is None or slot >= hello.n_imus:
                raise UserError(f"{self.source}: node {node_id} sent no HELLO describing IMU {slot}")
            out.append((i, identity_of(hello, slot), hello, slot))
        return out

    def segment(self, start_s: float, stop_s: float) -> Capture:
        """The frames with start_s <= t - t0 < stop_s (the same nodes)."""
        t = self.block.t_host_s
        rel = t - t[0]
        keep = (rel >= start_s) & (rel < stop_s)
        b = self.block
        block = FrameBlock(t[keep], b.accel_mps2[keep], b.gyro_rads[keep], b.mag_uT[keep], b.valid[keep],
                           b.sites, b.node_ids, b.corrected_by)
        return Capture(block, self.hellos, self.temps_c, self.drift_ppm, self.clock_points, self.source, self.rate_hz)


def _label(ident: ImuIdentity, hello: Hello) -> str:
    return ident.label(hello.node_id)


def _stack(frames: Sequence[Frame], source: str) -> FrameBlock:
    if not frames:
        raise UserError(f"{source}: no frames came")
    last = frames[-1]
    same = [f for f in frames if f.sites == last.sites and f.node_ids == last.node_ids]
    return FrameBlock(np.array([f.t_host_s for f in same]), np.stack([f.accel_mps2 for f in same]),
                      np.stack([f.gyro_rads for f in same]), np.stack([f.mag_uT for f in same]),
                      np.stack([f.valid for f in same]), last.sites, last.node_ids, last.corrected_by)


def capture_session(urls: Sequence[str], seconds: float, *, rate_hz: float = 60.0,
                    on_progress: Callable[[float], None] | None = None) -> Capture:
    """``seconds`` of raw frames from live nodes (a fresh session, no calibration applied)."""
    from imusic.session import Session

    frames: list[Frame] = []
    temps: dict[int, list[float]] = {}
    seen_status: dict[int, int] = {}
    with Session.open(list(urls), rate_hz=rate_hz) as session:
        t0: float | None = None
        for frame in session.frames(timeout_s=5.0):
            frames.append(frame)
            t0 = frame.t_host_s if t0 is None else t0
            if len(frames) % 15 == 0:
                for node_id, client in session.nodes.items():
                    st: Status | None = client.latest_status
                    if st is not None and id(st) != seen_status.get(node_id) and st.temp_cdeg != UNKNOWN_TEMP:
                        seen_status[node_id] = id(st)
                        temps.setdefault(node_id, []).append(st.temp_cdeg / 100.0)
                if on_progress is not None:
                    on_progress(frame.t_host_s - t0)
            if frame.t_host_s - t0 >= seconds:
                break
        hellos = {nid: c.hello for nid, c in session.nodes.items() if c.hello is not None}
        fits = session.clock_fits()
        drift = {nid: (fit.device_drift_ppm if fit.ready else None) for nid, fit in fits.items()}
        points = {nid: fit.n_points for nid, fit in fits.items() if fit.ready}
    source = " ".join(urls)
    return Capture(_stack(frames, source), hellos, {k: float(np.mean(v)) for k, v in temps.items()}, drift, points,
                   source, rate_hz)


def recording_messages(path: str | Path) -> tuple[dict[int, Hello], dict[int, list[Status]]]:
    """The last HELLO and every STATUS of each node in a recording (decoded in bulk)."""
    from imusic.protocol import Flag, decode_samples_bulk
    from imusic.recording import ChunkKind, RecordingReader

    reader = RecordingReader(path)
    by_link: dict[int, list[bytes]] = {}
    for chunk in reader.chunks(kinds=(ChunkKind.DATA,)):
        by_link.setdefault(chunk.link_id, []).append(chunk.payload)
    hellos: dict[int, Hello] = {}
    statuses: dict[int, list[Status]] = {}
    for payloads in by_link.values():
        for msg in decode_samples_bulk(b"".join(payloads)).messages:
            if msg.flags & Flag.HOST:
                continue
            if isinstance(msg, Hello):
                hellos[msg.node_id] = msg
            elif isinstance(msg, Status):
                statuses.setdefault(msg.node_id, []).append(msg)
    return hellos, statuses


def capture_recording(path: str | Path, *, rate_hz: float = 60.0, start_s: float = 0.0,
                      seconds: float | None = None) -> Capture:
    """The raw frames of a recording (its clocks refitted, as a replay session does)."""
    from imusic.replay import replay_blocks

    result = replay_blocks(path, rate_hz)
    if not result.blocks:
        raise UserError(f"{path}: the recording holds no frames")
    blocks = [b for b in result.blocks if b.sites == result.blocks[-1].sites and b.node_ids == result.blocks[-1].node_ids]
    block = FrameBlock(np.concatenate([b.t_host_s for b in blocks]), np.concatenate([b.accel_mps2 for b in blocks]),
                       np.concatenate([b.gyro_rads for b in blocks]), np.concatenate([b.mag_uT for b in blocks]),
                       np.concatenate([b.valid for b in blocks]), blocks[-1].sites, blocks[-1].node_ids)
    hellos, statuses = recording_messages(path)
    temps = {nid: float(np.mean([s.temp_cdeg for s in sts if s.temp_cdeg != UNKNOWN_TEMP])) / 100.0
             for nid, sts in statuses.items() if any(s.temp_cdeg != UNKNOWN_TEMP for s in sts)}
    drift: dict[int, float | None] = {}
    for nid, rep in result.nodes.items():
        value = rep.get("clock_drift_ppm")
        drift[int(nid)] = None if value is None else float(value)
    cap = Capture(block, hellos, dict(temps), drift, {}, f"file://{path}", rate_hz)
    if start_s > 0 or seconds is not None:
        cap = cap.segment(start_s, math.inf if seconds is None else start_s + seconds)
    return cap


# ---- the steps


def _check_saturation(step: str, who: str, info: Any, accel: np.ndarray, gyro: np.ndarray,
                      mag: np.ndarray | None = None) -> None:
    saturation_check(step, who, accel, info.accel_range_g * STANDARD_GRAVITY, "accelerometer",
                     1.0 / STANDARD_GRAVITY, "g")
    saturation_check(step, who, gyro, info.gyro_range_dps * DEG, "gyroscope", 1.0 / DEG, "dps")
    if mag is not None and info.mag_range_gauss:
        saturation_check(step, who, mag, info.mag_range_gauss * UT_PER_GAUSS, "magnetometer",
                         1.0 / UT_PER_GAUSS, "gauss")


def _thresholds(hello: Hello, slot: int) -> Any:
    info = hello.imus[slot]
    return still_thresholds(chip_name(info.chip), float(hello.rate_hz), gyro_lsb_rads=info.gyro_scale,
                            accel_lsb_mps2=info.accel_scale)


def _require_valid(step: str, who: str, valid: np.ndarray) -> None:
    if valid.size == 0 or valid.mean() < 0.5:
        raise CalibrationError(step, who, f"missing: valid in {int(valid.sum())} of {valid.size} frames "
                                          "(is it connected?)")


def run_step(step: str, capture: Capture, cal: Calibration, *, head_reference: str | None = None,
             field_uT: float | None = None) -> list[dict[str, Any]]:
    """Run ``step`` on ``capture``; on success store the results in ``cal`` and return one row per
    IMU (or node) for printing. On failure raise ``CalibrationError``; ``cal`` is unchanged."""
    if step not in STEPS:
        raise UserError(f"unknown calibration step {step!r} (steps: {', '.join(STEPS)})")
    if len(capture.block) < 2:
        raise CalibrationError(step, "", f"{capture.source}: no frames captured")
    rows: list[dict[str, Any]] = []
    commits: list[Callable[[], None]] = []
    b = capture.block
    source, seconds = capture.source, capture.seconds
    if step == "clock":
        for node_id, hello in sorted(capture.hellos.items()):
            drift = capture.drift_ppm.get(node_id)
            if drift is None:
                raise CalibrationError(step, f"node {node_id}", "no clock fit (the node never answered TIME_SYNC)")
            uid = hello.uid.hex()
            rows.append({"step": step, "node_id": node_id, "node_uid": uid, "estimate": {"drift_ppm": drift}})
            commits.append(lambda u=uid, d=drift, n=capture.clock_points.get(node_id):
                           cal.set_clock(u, d, source=source, seconds=seconds, points=n))
    elif step == "neutral":
        rows, commits = _neutral(capture, cal, head_reference)
    else:
        for i, ident, hello, slot in capture.imus():
            who = _label(ident, hello)
            info = hello.imus[slot]
            valid = b.valid[:, i]
            a, g, m = b.accel_mps2[:, i], b.gyro_rads[:, i], b.mag_uT[:, i]
            row: dict[str, Any] = {"step": step, "imu": who, "site": ident.site, "node_id": hello.node_id,
                                   "slot": slot}
            if step == "mag" and not info.mag_chip:
                continue
            _require_valid(step, who, valid)
            _check_saturation(step, who, info, a, g, m if step == "mag" else None)
            th = _thresholds(hello, slot)
            if step == "gyro":
                fit = gyro_bias(g, a, float(capture.rate_hz), th, who=who)
                temp = capture.temps_c.get(hello.node_id)
                row["estimate"] = {"bias_dps": (fit.bias_rads / DEG).tolist(),
                                   "stderr_dps": (fit.stderr_rads / DEG).tolist(), "temp_c": temp,
                                   "samples": fit.samples}
                commits.append(lambda ident=ident, fit=fit, temp=temp: cal.set_gyro(
                    ident, fit.bias_rads, fit.stderr_rads, samples=fit.samples, temp_c=temp, source=source,
                    seconds=seconds))
            elif step == "accel":
                segs = static_segments(a, g, float(capture.rate_hz), th)
                afit = accel_fit([s.accel_mean_mps2 for s in segs], who=who)
                offset, matrix, residual_mg = afit.offset_mps2, afit.matrix, afit.residual_mg
                # the turns between the poses, if they were about a fixed point, fix the cross-axis terms
                moving = np.ones(len(a), dtype=bool)
                for sg in segs:
                    moving[sg.start:sg.stop] = False
                known = cal.step(ident.key, "gyro")
                g_bias = (np.asarray(known["bias_rads"]) if known is not None
                          else np.mean([sg.gyro_mean_rads for sg in segs], axis=0))
                refined = accel_refine_rotating(afit.pose_means_mps2, a, g - g_bias, float(capture.rate_hz),
                                                offset, matrix, moving=moving)
                method = "six-pose"
                extra: dict[str, Any] = {}
                if refined is not None:
                    offset, matrix, method = refined.offset_mps2, refined.matrix, "six-pose + turns"
                    norms = np.linalg.norm((afit.pose_means_mps2 - offset) @ matrix.T, axis=1)
                    residual_mg = float(np.sqrt(np.mean((norms - STANDARD_GRAVITY) ** 2)) / STANDARD_GRAVITY * 1e3)
                    extra = {"turning_samples": refined.samples, "turning_rms_mg": round(refined.rms_mg, 4),
                             "lever_arm_mm": [round(float(v) * 1e3, 2) for v in refined.lever_arm_m]}
                # the same turns give the gyro's own gain: integrated, it must carry each pose's
                # gravity direction onto the next one's
                scale = gyro_scale_from_turns((a - offset) @ matrix.T, g - g_bias, segs, float(capture.rate_hz))
                row["estimate"] = {"offset_mg": (offset / STANDARD_GRAVITY * 1e3).tolist(),
                                   "matrix": matrix.tolist(), "residual_mg": residual_mg,
                                   "poses": afit.poses, "segments": len(segs), "method": method, **extra,
                                   "gyro_scale": None if scale is None else {
                                       "matrix": scale.matrix.tolist(), "turns": scale.turns,
                                       "gain_pct": round(scale.gain_pct, 4), "angle_deg": round(scale.angle_deg, 4),
                                       "rms_mrad": round(scale.rms_rad * 1e3, 4)}}
                commits.append(lambda ident=ident, offset=offset, matrix=matrix, residual_mg=residual_mg,
                               poses=afit.poses, method=method, extra=extra: cal.set_accel(
                    ident, offset, matrix, residual_mg=residual_mg, poses=poses, source=source, seconds=seconds,
                    method=method, **extra))
                commits.append(lambda ident=ident, scale=scale: cal.set_gyro_scale(
                    ident, None if scale is None else scale.matrix, source=source, seconds=seconds,
                    turns=None if scale is None else scale.turns))
            else:
                mfit = mag_fit(m, who=who, field_uT=field_uT)
                row["estimate"] = {"offset_uT": mfit.offset_uT.tolist(), "matrix": mfit.matrix.tolist(),
                                   "field_uT": mfit.field_uT, "spread_pct": mfit.spread_pct,
                                   "raw_spread_pct": mfit.raw_spread_pct, "coverage": mfit.coverage}
                commits.append(lambda ident=ident, mfit=mfit: cal.set_mag(
                    ident, mfit.offset_uT, mfit.matrix, field_uT=mfit.field_uT, spread_pct=mfit.spread_pct,
                    coverage=mfit.coverage, samples=mfit.samples, source=source, seconds=seconds))
            rows.append(row)
        if step == "mag" and not rows:
            raise CalibrationError(step, "", "no IMU of this rig has a magnetometer")
    # every IMU passed: now (and only now) the calibration changes
    cal.register(capture.hellos.values())
    for commit in commits:
        commit()
    return rows


def _neutral(capture: Capture, cal: Calibration, head_reference: str | None
             ) -> tuple[list[dict[str, Any]], list[Callable[[], None]]]:
    step = "neutral"
    imus = capture.imus()
    sites = [ident.site for _, ident, _, _ in imus]
    if head_reference is None:
        head_reference = cal.head_reference
    if head_reference is None:
        raise CalibrationError(step, "", "which site is the head reference? (give --head-reference SITE or --layout)")
    if head_reference not in sites:
        raise CalibrationError(step, head_reference, f"the head reference is not among this rig's sites "
                                                     f"({', '.join(sites)})")
    # the neutral pose uses calibrated signals: the bias-free gyro and the corrected accelerometer
    probe = Calibration.from_json(cal.to_json())
    probe.register(capture.hellos.values())
    block = probe.apply_block(capture.block)
    ref = sites.index(head_reference)
    _, ref_ident, ref_hello, _ = imus[ref]
    _require_valid(step, _label(ref_ident, ref_hello), block.valid[:, ref])
    rows: list[dict[str, Any]] = []
    commits: list[Callable[[], None]] = []
    source, seconds = capture.source, capture.seconds
    for i, ident, hello, _slot in imus:
        if i == ref:
            continue
        who = _label(ident, hello)
        _require_valid(step, who, block.valid[:, i])
        ref_a, ref_g = block.accel_mps2[:, ref], block.gyro_rads[:, ref]
        site_a, site_g = block.accel_mps2[:, i], block.gyro_rads[:, i]
        fit = neutral_rotation(ref_a, ref_g, site_a, site_g, who=who)
        # the gyro's gain against the head reference's, made consistent with that pose: the corrected
        # site gyro reads the reference's rates turned by exactly the stored rest orientation
        gain = relative_gyro_gain(ref_g, site_g, fit.R_ref_sensor.T, who=who)
        # the accelerometer made to agree with that pose too (its axes differ from the gyro's by the
        # cross-axis errors): both orientation filters then see one rigid body
        align = relative_accel_alignment(ref_a, ref_g, site_a, fit.R_ref_sensor, float(capture.rate_hz), who=who)
        q = matrix_to_quat(fit.R_ref_sensor)
        # the capture was corrected by the old one: g1 = M_old (raw - b) - d_old; new g2 = C (g1 - c)
        old_matrix, old_offset = cal.gyro_gain(ident.key)
        total_gain = gain.matrix @ old_matrix
        total_offset = gain.matrix @ (old_offset + gain.offset_rads)
        total_align = align.rotation @ cal.accel_alignment(ident.key)  # likewise for the old alignment
        rows.append({"step": step, "imu": who, "site": ident.site, "node_id": hello.node_id,
                     "estimate": {"q_ref_sensor": q.tolist(), "turning_frames": fit.rate_frames,
                                  "horizontal_rate_dps": fit.horizontal_rate_dps,
                                  "gyro_gain_mismatch": gain.gain_mismatch,
                                  "accel_alignment_deg": align.angle_deg,
                                  "lever_arm_mm": [round(float(v) * 1e3, 3) for v in align.lever_arm_m],
                                  "rigid_body_rms_mps2": {"before": align.rms_before_mps2,
                                                          "after": align.rms_after_mps2},
                                  "relative_rate_rms_dps": {"before": gain.rms_before_dps,
                                                            "after": gain.rms_after_dps}}})
        commits.append(lambda site=ident.site, q=q, fit=fit, arm=align.lever_arm_m: cal.set_neutral(
            site, q, head_reference=head_reference, source=source, seconds=seconds, lever_arm_m=arm,
            method="gravity+rate vectors", turning_frames=fit.rate_frames))
        commits.append(lambda ident=ident, m=total_gain, d=total_offset, g=gain: cal.set_gyro_gain(
            ident, m, d, relative_to=head_reference, source=source, seconds=seconds, turning_frames=g.frames,
            relative_rate_rms_dps=[round(g.rms_before_dps, 4), round(g.rms_after_dps, 4)]))
        commits.append(lambda ident=ident, r=total_align, a=align: cal.set_accel_alignment(
            ident, r, relative_to=head_reference, source=source, seconds=seconds, angle_deg=round(a.angle_deg, 4)))
    return rows, commits

