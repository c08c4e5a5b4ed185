"""The teacher: a Transformer diffusion model over short blendshape sequences, conditioned on the
IMU window, trained in two stages (after IMUSIC).

- ``IMUEncoder``: the window's W frames become W/``patch`` tokens (a per-channel temporal filter
  over each patch, then pointwise layers), related by a Transformer encoder. Stage 1 trains it
  alone by direct regression: a head on the newest token and the mean token predicts the last
  ``seq_frames`` blendshape frames.
- ``Denoiser``: a Transformer decoder over the ``seq_frames`` blendshape frames that end at the
  newest frame (the noisy sample, the diffusion step and the encoder's regression as a per-frame
  hint), cross-attending to the encoder's tokens. It predicts the clean sequence (x0). Stage 2
  trains it (L1 on the predicted clean sequence) with the encoder fine-tuned (the regression loss
  stays on as an auxiliary term).
- Sampling: DDIM (deterministic, eta = 0) on a cosine schedule of ``diffusion_steps`` training
  steps, with few sampling steps (default ``DEFAULT_SAMPLING_STEPS``), from an initial sample
  x_T scaled by ``temperature``. The output is the sampled newest frame mapped back to 0-1 and
  clipped.

Blendshapes live in [-1, 1] inside the diffusion (2 y - 1). Activations are ReLU (exact GELU would
not convert to TFLite; the teacher is not exported, but it keeps to the project's rule).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

N_OUT = 52
DEFAULT_SAMPLING_STEPS = 10
# Scale of the initial noise x_T. 0 starts DDIM at the prior's mean: on held-out simulated subjects
# it gave a lower MAE than 0.5 or 1 at every step count tried (docs/model.md, "Teacher sampling").
DEFAULT_TEMPERATURE = 0.0


def cosine_alpha_bar(n_steps: int) -> torch.Tensor:
    """alpha_bar[t] for t = 0..n_steps (alpha_bar[0] = 1: the clean sample), cosine schedule."""
    s = 0.008
    t = torch.arange(n_steps + 1, dtype=torch.float64) / n_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    ab = (f / f[0]).clamp(min=1e-5, max=1.0)
    return ab.to(torch.float32)


def step_embedding(t: torch.Tensor, dim: int, n_steps: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps t (B,) in [0, n_steps] -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    ang = (t.float() / n_steps * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


class IMUEncoder(nn.Module):
    def __init__(self, window_frames: int, channels: int, d_model: int, layers: int, heads: int,
                 ff: int, dropout: float, patch: int, seq_frames: int, final_norm: bool = True) -> None:
        super().__init__()
        if window_frames % patch:
            raise ValueError(f"window_frames {window_frames} is not a multiple of patch {patch}")
        self.tokens = window_frames // patch
        # tokens of `patch` frames: a per-channel temporal filter (starting as the average, which
        # keeps the slow rel_rot levels; see imusic_model.student), then two pointwise layers
        dw = nn.Conv1d(channels, channels, kernel_size=patch, stride=patch, groups=channels)
        with torch.no_grad():
            dw.weight.fill_(1.0 / patch)
            dw.bias.zero_()
        self.stem = nn.Sequential(dw, nn.Conv1d(channels, d_model, 1), nn.ReLU(), nn.Conv1d(d_model, d_model, 1))
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, d_model))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, activation="relu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = final_norm
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.seq_frames = seq_frames
        self.head = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model), nn.ReLU(),
                                  nn.Linear(2 * d_model, seq_frames * N_OUT))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W, C) -> tokens (B, W/patch, d), regression (B, seq_frames, 52) in blendshape units."""
        h = self.stem(x.transpose(1, 2)).transpose(1, 2) + self.pos
        h = self.norm(self.encoder(h))
        pooled = torch.cat([h[:, -1], h.mean(dim=1)], dim=1)
        reg = self.head(pooled).view(-1, self.seq_frames, N_OUT)
        return h, reg


class Denoiser(nn.Module):
    def __init__(self, seq_frames: int, d_model: int, layers: int, heads: int, ff: int, dropout: float,
                 diffusion_steps: int) -> None:
        super().__init__()
        self.diffusion_steps = diffusion_steps
        self.d_model = d_model
        self.inp = nn.Linear(2 * N_OUT, d_model)  # noisy sample and the encoder's regression, per frame
        self.pos = nn.Parameter(torch.zeros(1, seq_frames, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.t_mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerDecoderLayer(d_model, heads, ff, dropout, activation="relu", batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)  # no final norm, as in the encoder
        self.out = nn.Linear(d_model, N_OUT)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, memory: torch.Tensor, hint: torch.Tensor) -> torch.Tensor:
        """z_t (B, K, 52) noisy sample in [-1, 1] units, t (B,) steps, memory (B, N, d) encoder
        tokens, hint (B, K, 52) regression in [-1, 1] units -> predicted clean sample (B, K, 52)."""
        temb = self.t_mlp(step_embedding(t, self.d_model, self.diffusion_steps))
        h = self.inp(torch.cat([z_t, hint], dim=-1)) + self.pos + temb[:, None, :]
        h = self.decoder(h, memory)
        return self.out(h)


class Teacher(nn.Module):
    alpha_bar: torch.Tensor

    def __init__(self, window_frames: int, channels: int, d_model: int = 96, enc_layers: int = 3,
                 dec_layers: int = 2, heads: int = 4, ff: int = 192, dropout: float = 0.0, patch: int = 4,
                 seq_frames: int = 8, diffusion_steps: int = 100,
                 sampling_steps: int = DEFAULT_SAMPLING_STEPS, final_norm: bool = True,
                 temperature: float = DEFAULT_TEMPERATURE) -> None:
        super().__init__()
        self.window_frames, self.channels = window_frames, channels
        self._arch: dict[str, Any] = {
            "window_frames": window_frames, "channels": channels, "d_model": d_model, "enc_layers": enc_layers,
            "dec_layers": dec_layers, "heads": heads, "ff": ff, "dropout": dropout, "patch": patch,
            "seq_frames": seq_frames, "diffusion_steps": diffusion_steps, "sampling_steps": sampling_steps,
            "final_norm": final_norm, "temperature": temperature}
        self.seq_frames = seq_frames
        self.diffusion_steps = diffusion_steps
        self.sampling_steps = sampling_steps
        self.temperature = temperature
        self.encoder = IMUEncoder(window_frames, channels, d_model, enc_layers, heads, ff, dropout, patch, seq_frames,
                                  final_norm)
        self.denoiser = Denoiser(seq_frames, d_model, dec_layers, heads, ff, dropout, diffusion_steps)
        self.register_buffer("alpha_bar", cosine_alpha_bar(diffusion_steps), persistent=False)

    def arch_dict(self) -> dict[str, Any]:
        return dict(self._arch)

    # --- stage 1 -------------------------------------------------------------------------------
    def regress(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's direct regression of the newest frame, (B, 52) in [0, 1]."""
        return torch.clamp(self.encoder(x)[1][:, -1], 0.0, 1.0)

    # --- stage 2 -------------------------------------------------------------------------------
    def diffusion_loss(self, x: torch.Tensor, y_seq: torch.Tensor, generator: torch.Generator | None = None,
                       newest_weight: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(denoising loss, regression loss) on windows x (B, W, C) and their blendshape sequences
        y_seq (B, K, 52) in [0, 1]. The denoiser predicts x0 (L1, the newest frame weighted
        ``newest_weight`` times); the encoder keeps its L1 regression loss."""
        memory, reg = self.encoder(x)
        z0 = 2.0 * y_seq - 1.0
        b = x.shape[0]
        t = torch.randint(1, self.diffusion_steps + 1, (b,), generator=generator)
        noise = torch.randn(z0.shape, generator=generator)
        ab = self.alpha_bar[t][:, None, None]
        z_t = ab.sqrt() * z0 + (1.0 - ab).sqrt() * noise
        z0_hat = self.denoiser(z_t, t, memory, 2.0 * reg - 1.0)
        w = torch.ones(self.seq_frames)
        w[-1] = newest_weight
        w = w / w.sum()
        # L1, not the usual squared error: the MAE the teacher is judged by rewards the conditional
        # median, and blendshapes are skewed (mostly near 0), where mean and median differ most
        diff = (z0_hat - z0).abs().mean(dim=2)  # (B, K)
        loss = (diff * w[None, :]).sum(dim=1).mean()
        reg_loss = (reg - y_seq).abs().mean()
        return loss, reg_loss

    @torch.no_grad()
    def sample(self, x: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None,
               temperature: float | None = None) -> torch.Tensor:
        """DDIM (eta = 0) with ``steps`` sampling steps from x_T = ``temperature`` * N(0, I)
        (defaults: the model's): (B, W, C) -> the sampled blendshape sequence (B, K, 52) in [0, 1]."""
        n = self.sampling_steps if steps is None else int(steps)
        temperature = self.temperature if temperature is None else float(temperature)
        if n < 1:
            raise ValueError("sampling steps must be >= 1")
        memory, reg = self.encoder(x)
        hint = 2.0 * reg - 1.0
        b = x.shape[0]
        z = torch.randn((b, self.seq_frames, N_OUT), generator=generator) * temperature
        ts = torch.linspace(self.diffusion_steps, 0, n + 1).round().long()
        z0_hat = z
        for i in range(n):
            t, t_next = int(ts[i]), int(ts[i + 1])
            ab, ab_next = self.alpha_bar[t], self.alpha_bar[t_next]
            z0_hat = self.denoiser(z, torch.full((b,), t, dtype=torch.long), memory, hint).clamp(-1.0, 1.0)
            eps = (z - ab.sqrt() * z0_hat) / (1.0 - ab).sqrt()
            z = ab_next.sqrt() * z0_hat + (1.0 - ab_next).sqrt() * eps
        return ((z0_hat + 1.0) * 0.5).clamp(0.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, W, C) -> the sampled newest frame (B, 52) in [0, 1], default sampling steps and a
        fixed seed (the same input gives the same output)."""
        g = torch.Generator().manual_seed(0)
        return self.sample(x, generator=g)[:, -1]
