"""``imusic train teacher|student``: training, distillation, fine-tuning, checkpoints and resume.

- Data: ``imusic.data`` (takes -> features, subject split, normalisation of the training split,
  windows of ``WINDOW_FRAMES`` frames made on demand). A fixed, seeded subset of at most
  ``max_windows`` training windows is used (neighbouring windows at 60 Hz are near copies).
- Teacher: stage 1 trains the IMU encoder by direct regression of the last ``seq_frames``
  blendshape frames; stage 2 trains the diffusion denoiser with the encoder fine-tuned (lower
  learning rate; its regression loss stays on). Validation: the regression's MAE in stage 1, the
  DDIM-sampled newest frame's MAE in stage 2.
- Student: L1 on its raw output against a mix of the ground truth and the teacher's sampled
  outputs (``distill_weight`` on the teacher; computed once per run on the training subset and
  cached in OUT), with IMU dropout (a random face site marked invalid through the window) and
  stream-start dropout (the oldest frames invalid, as at the start of a live stream).
- Fine-tuning (``--finetune --from MODEL``): a student checkpoint's network, normalisation and
  window on new paired recordings, at a tenth of the learning rate.
- Every epoch: OUT/last.pt, and OUT/best.pt when the validation MAE improves (atomic writes).
  ``--resume`` continues from last.pt and gives the same weights as an uninterrupted run: every
  epoch's randomness comes from (seed, epoch, rank), and the learning rate from the step number.
- Past one machine: run under ``torchrun``; with WORLD_SIZE set, the processes join a gloo
  process group, the model is wrapped in DistributedDataParallel, each rank takes its
  DistributedSampler share of the global batch, and rank 0 alone validates, prints and writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch
from torch import nn

from imusic.errors import UserError
from imusic.modelio import ModelSpec
from imusic_model.checkpoint import (
    CheckpointError, build_model, file_sha256, load_checkpoint, save_checkpoint, spec_of,
)
from imusic_model.student import Student
from imusic_model.teacher import DEFAULT_SAMPLING_STEPS, Teacher

WINDOW_FRAMES = 48  # 0.8 s at 60 Hz, newest last
CALIB_WINDOWS = 256
SPLIT_SEED = 0  # the subject split does not follow --seed: teacher and student runs share it
TIME_SPLIT_VAL = 0.2  # fine-tuning on fewer than 3 subjects: the last 20% of every take validates

# Defaults sized for the 20-subject x 6-minute simulated set on 2 cores (docs/model.md, "Training").
DEFAULTS: dict[str, dict[str, Any]] = {
    "teacher": {"epochs": 4, "stage1_epochs": 4, "batch": 256, "lr": 2e-3, "max_windows": 100_000},
    "student": {"epochs": 6, "batch": 256, "lr": 3e-3, "max_windows": 100_000},
    "finetune": {"epochs": 5, "batch": 256, "lr_scale": 0.1, "max_windows": 100_000},
}


class TrainError(UserError):
    """A training run that cannot start or continue as asked."""


@dataclass
class TrainConfig:
    kind: str  # "teacher" | "student"
    data: str
    out: str
    epochs: int | None = None  # student epochs; teacher: stage-2 epochs
    stage1_epochs: int | None = None  # teacher only
    batch: int | None = None
    lr: float | None = None
    seed: int = 0
    threads: int = 2
    resume: bool = False
    max_windows: int | None = None
    val_windows: int = 4096
    teacher: str | None = None  # student: distil from this teacher checkpoint
    distill_weight: float = 0.25  # student: share of the loss on the teacher's outputs (chosen on validation)
    teacher_steps: int | None = None  # DDIM steps for the teacher's outputs (default: the teacher's)
    imu_dropout: float = 0.3  # student: probability a window loses one face site (teacher: a third of it)
    augment_deg: float = 10.0  # rig augmentation: each site's features turned by up to this many degrees
    augment_gain: float = 0.15  # ... and scaled by 1 +- this
    finetune: bool = False
    from_model: str | None = None
    cache_dir: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)  # overrides of the network's defaults
    progress: bool = True
    ridge: bool = True  # fit the ridge baseline on the same training windows (student; export ships it)
    stop_after: int | None = None  # stop once this many epochs are done (continue later with --resume)
    command: str = ""

    def resolved(self) -> TrainConfig:
        """A copy with the defaults of its kind filled in."""
        d = DEFAULTS["finetune" if self.finetune else self.kind]
        c = TrainConfig(**asdict(self))
        c.epochs = c.epochs if c.epochs is not None else int(d["epochs"])
        if self.kind == "teacher":
            c.stage1_epochs = c.stage1_epochs if c.stage1_epochs is not None else int(d["stage1_epochs"])
        else:
            c.stage1_epochs = 0
        c.batch = c.batch if c.batch is not None else int(d["batch"])
        if c.lr is None:
            c.lr = float(DEFAULTS["student"]["lr"]) * float(d["lr_scale"]) if self.finetune else float(d["lr"])
        c.max_windows = c.max_windows if c.max_windows is not None else int(d["max_windows"])
        return c


# ---------------------------------------------------------------------------------------------
# processes


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


def _init_dist() -> _Dist:
    """Join torchrun's process group (gloo: CPU) when WORLD_SIZE is set."""
    if "WORLD_SIZE" not in os.environ:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise TrainError("this PyTorch build has no torch.distributed: run without torchrun")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), True)


def _seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (the same everywhere, unlike hash())."""
    h = hashlib.sha256(json.dumps([int(p) for p in parts]).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class _Data:
    ds: Any  # imusic.data.Dataset
    split: dict[str, list[str]]
    split_how: str
    train: Any  # imusic.data.Windows
    train_idx: np.ndarray  # the windows of `train` that are trained on
    val: Any
    val_idx: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def _load_dataset(cfg: TrainConfig, dist: _Dist, say: Callable[[str], None]) -> Any:
    from imusic.data import load_dataset

    # rank 0 computes and caches the features first; the others then read the cache
    ds = None
    if dist.main:
        ds = load_dataset(cfg.data, cache=True, cache_dir=cfg.cache_dir, workers=max(1, cfg.threads))
    dist.barrier()
    if ds is None:
        ds = load_dataset(cfg.data, cache=True, cache_dir=cfg.cache_dir)
    return ds


def _spread(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over 0..n-1 (all of them when k >= n)."""
    if k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def _time_split(windows: Any, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation windows of the same takes: the last ``frac`` of each take validates;
    training windows overlapping it are left out."""
    take, end = windows.locate(np.arange(len(windows)))
    tr: list[np.ndarray] = []
    va: list[np.ndarray] = []
    for k in np.unique(take):
        rows = np.flatnonzero(take == k)
        cut = windows.takes[int(k)].frames * (1.0 - frac)
        va.append(rows[end[rows] >= cut])
        tr.append(rows[end[rows] < cut - windows.window_frames])
    return np.concatenate(tr), np.concatenate(va)


def _prepare_data(cfg: TrainConfig, ds: Any, mean: np.ndarray | None, std: np.ndarray | None,
                  split: dict[str, list[str]] | None) -> _Data:
    from imusic.data import Windows, norm_stats, split_by_subject

    assert cfg.max_windows is not None and cfg.batch is not None
    how: str
    if split is not None:
        how = "subjects (the teacher's split)"
    elif cfg.finetune and len(ds.subjects) < 3:
        split, how = {"train": ds.subjects, "val": ds.subjects, "test": []}, \
            f"time: the last {TIME_SPLIT_VAL:.0%} of every take validates"
    elif cfg.finetune:
        split, how = split_by_subject(ds, n_test=0, seed=SPLIT_SEED), "subjects (no test subjects)"
    else:
        if len(ds.subjects) < 3:
            raise TrainError(f"{cfg.data}: {len(ds.subjects)} subject(s); training needs at least 3 "
                             "(train, validation and test subjects)")
        split, how = split_by_subject(ds, seed=SPLIT_SEED), f"subjects (imusic.data.split_by_subject, seed {SPLIT_SEED})"
    assert split is not None
    train_takes = ds.takes_of(split["train"])
    if mean is None or std is None:
        mean, std = norm_stats(train_takes)
    train = Windows(train_takes, WINDOW_FRAMES, mean, std)
    if how.startswith("time"):
        tr_all, va_all = _time_split(train, TIME_SPLIT_VAL)
        val = train
    else:
        val = Windows(ds.takes_of(split["val"]), WINDOW_FRAMES, mean, std)
        tr_all, va_all = np.arange(len(train)), np.arange(len(val))
    if len(tr_all) < cfg.batch or len(va_all) == 0:
        raise TrainError(f"{cfg.data}: too little data ({len(tr_all)} training and {len(va_all)} validation windows "
                         f"of {WINDOW_FRAMES} frames; the batch is {cfg.batch})")
    if cfg.max_windows < len(tr_all):
        pick = np.random.default_rng(_seed_of(cfg.seed, 17)).choice(len(tr_all), cfg.max_windows, replace=False)
        tr_idx = np.sort(tr_all[pick])
    else:
        tr_idx = tr_all
    va_idx = va_all[_spread(len(va_all), cfg.val_windows)]
    return _Data(ds, split, how, train, tr_idx, val, va_idx, np.asarray(mean, np.float32), np.asarray(std, np.float32))


def sequence_targets(windows: Any, idx: np.ndarray, frames: int) -> np.ndarray:
    """(B, frames, 52) blendshapes of the ``frames`` frames ending at each window's newest frame
    (frames without a label take the newest frame's)."""
    take, end = windows.locate(idx)
    out = np.empty((len(idx), frames, 52), np.float32)
    rel = np.arange(-frames + 1, 1)
    for k in np.unique(take):
        rows = np.flatnonzero(take == k)
        t = windows.takes[int(k)]
        fi = np.clip(end[rows, None] + rel[None, :], 0, None)
        out[rows] = t.blendshapes[fi]
    newest = np.repeat(out[:, -1:, :], frames, axis=1)
    return np.where(np.isfinite(out), out, newest)


# ---------------------------------------------------------------------------------------------
# losses (modules, so that DistributedDataParallel can wrap them)


class _Stage1Loss(nn.Module):
    w: torch.Tensor

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.encoder = teacher.encoder
        w = torch.ones(teacher.seq_frames)
        w[-1] = 4.0
        self.register_buffer("w", w / w.sum(), persistent=False)

    def forward(self, x: torch.Tensor, y_seq: torch.Tensor) -> torch.Tensor:
        _, reg = self.encoder(x)
        return ((reg - y_seq).abs().mean(dim=2) * self.w[None, :]).sum(dim=1).mean()


class _Stage2Loss(nn.Module):
    def __init__(self, teacher: Teacher, reg_weight: float = 0.5) -> None:
        super().__init__()
        self.teacher = teacher
        self.reg_weight = reg_weight

    def forward(self, x: torch.Tensor, y_seq: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        loss, reg = self.teacher.diffusion_loss(x, y_seq, generator=generator)
        return loss + self.reg_weight * reg


class _StudentLoss(nn.Module):
    def __init__(self, student: Student, distill_weight: float) -> None:
        super().__init__()
        self.student = student
        self.distill_weight = distill_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor, y_teacher: torch.Tensor | None) -> torch.Tensor:
        raw = self.student.forward_raw(x)
        loss = (raw - y).abs().mean()
        if y_teacher is not None and self.distill_weight > 0:
            loss = (1.0 - self.distill_weight) * loss + self.distill_weight * (raw - y_teacher).abs().mean()
        return loss


def augment_rig(x: np.ndarray, mean: np.ndarray, std: np.ndarray, rng: np.random.Generator,
                max_deg: float, gain: float) -> np.ndarray:
    """Another rig and face on the same motion: each window's face sites get their own small
    rotation (a sensor mounted a little differently; every 3-vector of the site's features
    turns with it) and gain (a face that moves more or less there). x: model inputs (B, W, C)
    (``assemble_input``); invalid sites stay 0."""
    b, w, c = x.shape
    n = c // 10
    mu = mean.reshape(n, 3, 3)
    sd = std.reshape(n, 3, 3)
    valid = x[:, :, n * 9:] > 0.5  # (B, W, n)
    raw = x[:, :, :n * 9].reshape(b, w, n, 3, 3) * sd + mu
    axis = rng.normal(size=(b, n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True) + 1e-12
    ang = np.deg2rad(max_deg) * rng.random((b, n))
    k = np.zeros((b, n, 3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -axis[..., 2], axis[..., 1], -axis[..., 0]
    k = k - np.swapaxes(k, -1, -2)
    s, cs = np.sin(ang)[..., None, None], (1.0 - np.cos(ang))[..., None, None]
    rot = np.eye(3) + s * k + cs * (k @ k)  # Rodrigues
    g = 1.0 + gain * (2.0 * rng.random((b, n)) - 1.0)
    raw = np.einsum("bnij,bwngj->bwngi", rot * g[..., None, None], raw)
    out = ((raw - mu) / sd).reshape(b, w, n * 9)
    out = np.where(np.repeat(valid, 9, axis=-1), out, 0.0)
    x = x.copy()
    x[:, :, :n * 9] = out
    return x.astype(np.float32)


def _lr_factor(step: int, total: int, warmup_frac: float = 0.03, floor: float = 0.05) -> float:
    """Linear warm-up, then a cosine down to ``floor`` of the peak: a function of the step alone."""
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return (step + 1) / warm
    p = min(1.0, (step - warm) / max(1, total - warm))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------------------
# evaluation helpers (also used by bench/ and the tests)


@torch.no_grad()
def predict(model: nn.Module, windows: Any, idx: np.ndarray, batch: int = 1024,
            drop_sites: np.ndarray | None = None, teacher_steps: int | None = None) -> np.ndarray:
    """(N, 52) predictions of a student or teacher (sampled with a fixed seed) on windows idx."""
    model.eval()
    out = []
    g = torch.Generator().manual_seed(0)
    for s in range(0, len(idx), batch):
        d = None if drop_sites is None else drop_sites[s:s + batch]
        x, _ = windows.batch(idx[s:s + batch], drop_sites=d)
        xt = torch.from_numpy(x)
        if isinstance(model, Teacher):
            out.append(model.sample(xt, steps=teacher_steps, generator=g)[:, -1].numpy())
        else:
            out.append(model(xt).numpy())
    return np.concatenate(out) if out else np.zeros((0, 52), np.float32)


def targets(windows: Any, idx: np.ndarray, batch: int = 4096) -> np.ndarray:
    return np.concatenate([windows.batch(idx[s:s + batch])[1] for s in range(0, len(idx), batch)])


@torch.no_grad()
def _val_mae(model: nn.Module, kind: str, stage: int, data: _Data, y_val: np.ndarray) -> float:
    if kind == "teacher" and stage == 1:
        assert isinstance(model, Teacher)
        model.eval()
        preds = []
        for s in range(0, len(data.val_idx), 1024):
            x, _ = data.val.batch(data.val_idx[s:s + 1024])
            preds.append(model.regress(torch.from_numpy(x)).numpy())
        p = np.concatenate(preds)
    else:
        p = predict(model, data.val, data.val_idx)
    return float(np.abs(p - y_val).mean())


# ---------------------------------------------------------------------------------------------
# the run


def _fingerprint(cfg: TrainConfig) -> dict[str, Any]:
    """What must not change between a run and its --resume."""
    return {"kind": cfg.kind, "data": str(Path(cfg.data).resolve()), "seed": cfg.seed, "batch": cfg.batch,
            "max_windows": cfg.max_windows, "val_windows": cfg.val_windows, "stage1_epochs": cfg.stage1_epochs,
            "teacher": str(Path(cfg.teacher).resolve()) if cfg.teacher else None,
            "distill_weight": cfg.distill_weight if cfg.teacher else None, "imu_dropout": cfg.imu_dropout,
            "augment": [cfg.augment_deg, cfg.augment_gain], "finetune": cfg.finetune, "from": str(Path(cfg.from_model).resolve()) if cfg.from_model else None,
            "lr": cfg.lr, "arch": cfg.arch}


def _check_out(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a directory")
    last = out / "last.pt"
    if cfg.resume and not last.is_file():
        raise TrainError(f"--resume: no {last} to continue from")
    if not cfg.resume and last.exists():
        raise TrainError(f"{out} already holds a training run (last.pt): pass --resume to continue it, "
                         "or choose another --out")
    return out


def _ridge_bytes(data: _Data) -> tuple[bytes, float | None]:
    """The ridge baseline fit on the same training windows, as .npz bytes, and its val MAE."""
    from imusic.ridge import RidgeBaseline

    r = RidgeBaseline(WINDOW_FRAMES, data.train.channels)
    r.meta = {"fit_on": "the training split of the model beside it", "split": data.split}
    sub = _SubsetWindows(data.train, data.train_idx)
    vsub = _SubsetWindows(data.val, data.val_idx)
    r.fit_windows(sub, vsub)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        p = r.save(Path(tmp) / "ridge.npz")
        return p.read_bytes(), r.val_mae


class _SubsetWindows:
    """A view of some windows of an ``imusic.data.Windows`` with the same interface."""

    def __init__(self, windows: Any, idx: np.ndarray) -> None:
        self.w, self.idx = windows, np.asarray(idx)
        self.mean, self.std, self.window_frames = windows.mean, windows.std, windows.window_frames
        self.takes = windows.takes

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def channels(self) -> int:
        return int(self.w.channels)

    def batch(self, idx: Any, drop_sites: Any = None, frames: Any = None) -> tuple[np.ndarray, np.ndarray]:
        return self.w.batch(self.idx[np.asarray(idx)], drop_sites=drop_sites, frames=frames)

    def locate(self, idx: Any) -> tuple[np.ndarray, np.ndarray]:
        return self.w.locate(self.idx[np.asarray(idx)])


def _teacher_targets(cfg: TrainConfig, teacher: Teacher, teacher_path: Path, data: _Data, out: Path,
                     dist: _Dist, say: Callable[[str], None]) -> np.ndarray:
    """The teacher's sampled outputs on the training subset, computed once (rank 0) and cached."""
    steps = cfg.teacher_steps if cfg.teacher_steps is not None else teacher.sampling_steps
    key = hashlib.sha256(json.dumps({"teacher": file_sha256(teacher_path), "steps": steps,
                                     "data": str(Path(cfg.data).resolve()),
                                     "idx": hashlib.sha256(data.train_idx.tobytes()).hexdigest()}).encode()).hexdigest()
    cache = out / "teacher_targets.npz"
    if dist.main:
        hit = False
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                hit = str(z["key"]) == key
        if not hit:
            say(f"teacher outputs on {len(data.train_idx)} training windows ({steps} DDIM steps), once ...")
            from tqdm import tqdm

            teacher.eval()
            g = torch.Generator().manual_seed(_seed_of(cfg.seed, 23))
            ys = []
            bs = 1024
            with torch.no_grad():
                for s in tqdm(range(0, len(data.train_idx), bs), desc="teacher outputs", disable=not cfg.progress,
                              dynamic_ncols=True, mininterval=1.0):
                    x, _ = data.train.batch(data.train_idx[s:s + bs])
                    ys.append(teacher.sample(torch.from_numpy(x), steps=steps, generator=g)[:, -1].numpy())
            y = np.concatenate(ys).astype(np.float32)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, key=np.array(key), y=y)
            tmp.replace(cache)
    dist.barrier()
    with np.load(cache, allow_pickle=False) as z:
        if str(z["key"]) != key:
            raise TrainError(f"{cache}: teacher outputs of another run (remove the file)")
        return np.asarray(z["y"], np.float32)


def _make_optimizer(kind: str, stage: int, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if kind == "teacher":
        assert isinstance(model, Teacher)
        if stage == 1:
            return torch.optim.AdamW(model.encoder.parameters(), lr=lr, weight_decay=0.01)
        # stage 2: the denoiser learns, the encoder is fine-tuned at a third of the rate
        return torch.optim.AdamW([{"params": model.denoiser.parameters(), "lr": lr, "base": 1.0},
                                  {"params": model.encoder.parameters(), "lr": lr / 3, "base": 1 / 3}],
                                 weight_decay=0.01)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)


def _say(dist: _Dist) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if dist.main:
            print(msg, file=sys.stderr, flush=True)
    return say


def run(cfg: TrainConfig) -> Path:
    """Train as configured; returns OUT/best.pt."""
    cfg = cfg.resolved()
    assert cfg.epochs is not None and cfg.batch is not None and cfg.lr is not None and cfg.stage1_epochs is not None
    if cfg.kind not in ("teacher", "student"):
        raise TrainError(f"unknown model kind {cfg.kind!r} (teacher or student)")
    if cfg.finetune and (cfg.kind != "student" or not cfg.from_model):
        raise TrainError("--finetune needs `imusic train student --from MODEL` (a student checkpoint)")
    if cfg.from_model and not cfg.finetune:
        raise TrainError("--from is for fine-tuning: add --finetune")
    if cfg.teacher and cfg.kind != "student":
        raise TrainError("--teacher is for `imusic train student` (distillation)")
    for name, v in (("--epochs", cfg.epochs), ("--batch", cfg.batch), ("--max-windows", cfg.max_windows),
                    ("--threads", cfg.threads)):
        if v is None or v < 1:
            raise TrainError(f"{name} must be at least 1, not {v}")
    if cfg.stage1_epochs < 0 or not (cfg.lr > 0) or not (0.0 <= cfg.distill_weight <= 1.0) \
            or not (0.0 <= cfg.imu_dropout <= 1.0):
        raise TrainError("--stage1-epochs must be >= 0, --lr > 0, --distill-weight and --imu-dropout in 0..1")

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    dist = _init_dist()
    say = _say(dist)
    if cfg.batch % dist.world:
        raise TrainError(f"--batch {cfg.batch} is not a multiple of the {dist.world} processes")
    out = _check_out(cfg)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()

    # -- what the run starts from ---------------------------------------------------------------
    base: dict[str, Any] | None = None  # fine-tuning: the student checkpoint
    teacher_ck: dict[str, Any] | None = None
    mean = std = None
    split = None
    if cfg.finetune:
        assert cfg.from_model is not None
        base = load_checkpoint(cfg.from_model, kind="student")
        bspec = spec_of(base)
        mean, std = np.asarray(bspec.norm_mean, np.float32), np.asarray(bspec.norm_std, np.float32)
    if cfg.teacher:
        teacher_ck = load_checkpoint(cfg.teacher, kind="teacher")
    ds = _load_dataset(cfg, dist, say)
    from imusic.data import describe_dataset, trained_split

    if base is not None:
        spec_of(base).check_features(ds.feature_spec, f"the recordings in {cfg.data}")
    if teacher_ck is not None:
        tspec = spec_of(teacher_ck)
        tspec.check_features(ds.feature_spec, f"the recordings in {cfg.data}")
        split = trained_split(tspec.training, ds)
        if split is None:
            raise TrainError(f"{teacher_ck['_path']} was trained on another dataset than {cfg.data}: distil on the "
                             "teacher's own dataset (its split keeps the test subjects out of both)")
        mean, std = np.asarray(tspec.norm_mean, np.float32), np.asarray(tspec.norm_std, np.float32)
    data = _prepare_data(cfg, ds, mean, std, split)
    channels = int(data.train.channels)
    say(f"{len(ds.takes)} takes of {len(ds.subjects)} subjects ({'SIMULATED' if ds.simulated else 'recorded'}); "
        f"split by {data.split_how}: train {len(data.split['train'])}, val {len(data.split['val'])}, "
        f"test {len(data.split['test'])}; {len(data.train_idx)} training windows, {len(data.val_idx)} validation")

    # -- the network ----------------------------------------------------------------------------
    torch.manual_seed(_seed_of(cfg.seed, 1))
    model: nn.Module
    if base is not None:
        model = build_model(base)
    elif cfg.kind == "teacher":
        model = Teacher(WINDOW_FRAMES, channels, **cfg.arch)
    else:
        model = Student(WINDOW_FRAMES, channels, **cfg.arch)
    arch = model.arch_dict()  # type: ignore[operator]

    teacher: Teacher | None = None
    y_teacher: np.ndarray | None = None
    if teacher_ck is not None:
        tm = build_model(teacher_ck)
        assert isinstance(tm, Teacher)
        teacher = tm
        y_teacher = _teacher_targets(cfg, teacher, Path(teacher_ck["_path"]), data, out, dist, say)

    y_val = targets(data.val, data.val_idx)
    calib_idx = data.train_idx[_spread(len(data.train_idx), CALIB_WINDOWS)]
    calib_x = data.train.batch(calib_idx)[0].astype(np.float32)
    clip = getattr(model, "input_clip", None)
    if clip is not None:
        # the int8 input scale comes from these windows: clipped like the network clips, its 256
        # levels span +-clip instead of the rare outliers (a +-24 range made int8 miss parity)
        calib_x = np.clip(calib_x, -clip, clip)

    # -- resume ---------------------------------------------------------------------------------
    fp = _fingerprint(cfg)
    start_epoch = 0
    best_val = math.inf
    best_epoch = -1
    history: list[dict[str, Any]] = []
    opt_state: dict[str, Any] | None = None
    saved_stage: int | None = None
    total_epochs = cfg.stage1_epochs + cfg.epochs
    if cfg.resume:
        last = load_checkpoint(out / "last.pt", kind=cfg.kind)
        ts = last.get("train_state") or {}
        diffs = [k for k, v in fp.items() if (ts.get("fingerprint") or {}).get(k) != v]
        if diffs:
            raise TrainError(f"--resume: {out / 'last.pt'} was trained with other settings ({', '.join(diffs)}); "
                             "resume with the same ones")
        model.load_state_dict(last["state_dict"])
        start_epoch = int(ts["epoch"])
        best_val, best_epoch = float(ts["best_val"]), int(ts["best_epoch"])
        history = list(ts["history"])
        opt_state = ts["optimizer"]
        saved_stage = int(ts["stage"])
        if start_epoch >= total_epochs:
            say(f"{out / 'last.pt'} has finished its {total_epochs} epochs: nothing to do")
            return out / "best.pt"
        say(f"resuming after epoch {start_epoch} of {total_epochs}")

    ridge_blob: bytes | None = None
    ridge_val: float | None = None
    if dist.main and cfg.kind == "student" and cfg.ridge:
        ridge_blob, ridge_val = _ridge_bytes(data)
        (out / "ridge.npz").write_bytes(ridge_blob)
        say(f"ridge baseline (same training windows): validation MAE {ridge_val:.4f}")

    training: dict[str, Any] = {
        "data": "SIMULATED (imusic simulate)" if ds.simulated else "real paired recordings",
        "simulated": bool(ds.simulated), "dataset": describe_dataset(ds), "split": data.split,
        "split_by": data.split_how, "model": cfg.kind, "epochs": cfg.epochs, "seed": cfg.seed, "batch": cfg.batch,
        "lr": cfg.lr, "train_windows": int(len(data.train_idx)), "val_windows": int(len(data.val_idx)),
        "imu_dropout": cfg.imu_dropout if cfg.kind == "student" else cfg.imu_dropout / 3,
        "rig_augmentation": {"max_deg": cfg.augment_deg, "gain": cfg.augment_gain},
        "command": cfg.command or None, "processes": dist.world,
    }
    if cfg.kind == "teacher":
        training.update(stage1_epochs=cfg.stage1_epochs, sampling_steps=arch["sampling_steps"])
    else:
        assert isinstance(model, Student)
        training["macs_per_frame"] = model.macs()
        if ridge_val is not None:
            training["ridge_val_mae"] = round(ridge_val, 5)
    if teacher_ck is not None:
        training["distilled_from"] = {"path": teacher_ck["_path"], "sha256": file_sha256(teacher_ck["_path"]),
                                      "weight": cfg.distill_weight,
                                      "steps": cfg.teacher_steps or arch_steps(teacher_ck),
                                      "temperature": teacher.temperature if teacher is not None else None,
                                      "teacher_val_mae": spec_of(teacher_ck).training.get("val_mae")}
    if base is not None:
        training["finetuned_from"] = {"path": base["_path"], "sha256": file_sha256(base["_path"]),
                                      "training": spec_of(base).training}

    def checkpoint(epoch_done: int, stage: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        spec = ModelSpec(kind=cfg.kind, feature_spec=ds.feature_spec, window_frames=WINDOW_FRAMES,
                         norm_mean=[float(v) for v in data.mean], norm_std=[float(v) for v in data.std],
                         training={**training, "epochs_done": epoch_done, "val_mae": best_val,
                                   "best_epoch": best_epoch + 1, "history": history})
        ck: dict[str, Any] = {
            "kind": cfg.kind, "arch": arch, "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
            "spec": spec.to_json(), "calib_x": calib_x,
            "train_state": {"epoch": epoch_done, "stage": stage, "optimizer": optimizer.state_dict(),
                            "best_val": best_val, "best_epoch": best_epoch, "history": history, "fingerprint": fp,
                            "config": asdict(cfg)}}
        if ridge_blob is not None:
            ck["ridge"] = ridge_blob
        return ck

    # -- epochs ---------------------------------------------------------------------------------
    from torch.utils.data import DistributedSampler
    from tqdm import tqdm

    n_train = len(data.train_idx)
    per_rank = cfg.batch // dist.world
    sampler = DistributedSampler(cast(Any, range(n_train)), num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch < 1:
        raise TrainError(f"{n_train} training windows make no batch of {cfg.batch}")
    y_teacher_t = None if y_teacher is None else torch.from_numpy(y_teacher)
    n_sites = len(ds.face_sites)
    stage: int | None = saved_stage
    optimizer: torch.optim.Optimizer | None = None
    for epoch in range(start_epoch, total_epochs):
        this_stage = 1 if cfg.kind == "teacher" and epoch < cfg.stage1_epochs else 2
        if this_stage != stage:
            if stage is not None:  # the teacher kept is stage 2's best; stage 1's optimizer is not reused
                best_val, best_epoch = math.inf, -1
                opt_state = None
            stage, optimizer = this_stage, None
        if optimizer is None:
            optimizer = _make_optimizer(cfg.kind, this_stage, model, cfg.lr)
            if opt_state is not None:
                optimizer.load_state_dict(opt_state)
                opt_state = None
        loss_mod: nn.Module
        if cfg.kind == "teacher":
            assert isinstance(model, Teacher)
            loss_mod = _Stage1Loss(model) if this_stage == 1 else _Stage2Loss(model)
        else:
            assert isinstance(model, Student)
            loss_mod = _StudentLoss(model, cfg.distill_weight)
        wrapped: nn.Module = loss_mod
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(loss_mod)
        stage_first = 0 if (cfg.kind != "teacher" or this_stage == 1) else cfg.stage1_epochs
        stage_epochs = cfg.stage1_epochs if (cfg.kind == "teacher" and this_stage == 1) else cfg.epochs
        total_steps = stage_epochs * steps_per_epoch

        torch.manual_seed(_seed_of(cfg.seed, epoch, dist.rank, 2))  # dropout
        gen = torch.Generator().manual_seed(_seed_of(cfg.seed, epoch, dist.rank, 3))  # diffusion noise
        rng = np.random.default_rng(_seed_of(cfg.seed, epoch, dist.rank, 4))  # IMU dropout
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        p_drop = cfg.imu_dropout if cfg.kind == "student" else cfg.imu_dropout / 3
        model.train()
        t0 = time.perf_counter()
        run_loss = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.kind}{' stage ' + str(this_stage) if cfg.kind == 'teacher' else ''} "
                   f"epoch {epoch + 1}/{total_epochs}", disable=not (dist.main and cfg.progress), dynamic_ncols=True,
                   mininterval=1.0, leave=False)
        for i in bar:
            rows = order[i * per_rank:(i + 1) * per_rank]
            idx = data.train_idx[rows]
            drop = np.where(rng.random(len(idx)) < p_drop, rng.integers(0, n_sites, len(idx)), -1)
            x_np, y_np = data.train.batch(idx, drop_sites=drop)
            if cfg.augment_deg > 0 or cfg.augment_gain > 0:
                x_np = augment_rig(x_np, data.mean, data.std, rng, cfg.augment_deg, cfg.augment_gain)
            # stream start: the oldest frames of some windows are missing, as in a ring buffer still filling
            start = rng.random(len(idx)) < 0.05
            if start.any():
                cut = rng.integers(1, WINDOW_FRAMES, len(idx))
                for r in np.flatnonzero(start):
                    x_np[r, :cut[r]] = 0.0
            x = torch.from_numpy(x_np)
            step = (epoch - stage_first) * steps_per_epoch + i
            f = _lr_factor(step, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * f * float(g.get("base", 1.0))
            if cfg.kind == "teacher":
                y_seq = torch.from_numpy(sequence_targets(data.train, idx, model.seq_frames))  # type: ignore[union-attr]
                loss = wrapped(x, y_seq) if this_stage == 1 else wrapped(x, y_seq, gen)
            else:
                yt = None if y_teacher_t is None else y_teacher_t[torch.from_numpy(rows)]
                loss = wrapped(x, torch.from_numpy(y_np), yt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            run_loss += float(loss.detach())
            if i % 20 == 0:
                bar.set_postfix(loss=f"{run_loss / (i + 1):.4f}")
        bar.close()
        train_loss = run_loss / steps_per_epoch
        if dist.main:
            val = _val_mae(model, cfg.kind, this_stage, data, y_val)
            improved = val < best_val
            if improved:
                best_val, best_epoch = val, epoch
            history.append({"epoch": epoch + 1, "stage": this_stage, "train_loss": round(train_loss, 6),
                            "val_mae": round(val, 6), "seconds": round(time.perf_counter() - t0, 1)})
            ck = checkpoint(epoch + 1, this_stage, optimizer)
            save_checkpoint(ck, out / "last.pt")
            if improved:
                save_checkpoint(ck, out / "best.pt")
            what = ("regression" if this_stage == 1 else f"sampled, {arch['sampling_steps']} steps") \
                if cfg.kind == "teacher" else "student"
            say(f"epoch {epoch + 1}/{total_epochs}{' (stage ' + str(this_stage) + ')' if cfg.kind == 'teacher' else ''}: "
                f"train loss {train_loss:.4f}, val MAE {val:.4f} ({what}){' *best' if improved else ''}, "
                f"{time.perf_counter() - t0:.0f} s")
        dist.barrier()
        if cfg.stop_after is not None and epoch + 1 >= cfg.stop_after and epoch + 1 < total_epochs:
            say(f"stopped after epoch {epoch + 1} of {total_epochs} (--stop-after): continue with --resume")
            return out / "best.pt"
    say(f"done: {out / 'best.pt'} (val MAE {best_val:.4f}, epoch {best_epoch + 1})")
    return out / "best.pt"


def arch_steps(ck: dict[str, Any]) -> int:
    return int(ck["arch"].get("sampling_steps", DEFAULT_SAMPLING_STEPS))


def main(cfg: TrainConfig) -> int:
    try:
        run(cfg)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


__all__ = ["DEFAULTS", "CheckpointError", "TrainConfig", "TrainError", "WINDOW_FRAMES", "main", "predict", "run",
           "sequence_targets", "targets"]
