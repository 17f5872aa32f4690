"""GPTQ: quantize a weight one input column at a time and fold each column's rounding error into the
columns not yet quantized, weighted by what the layer actually sees (Frantar et al. 2022, "GPTQ").

Round-to-nearest minimises ||W - Q||; GPTQ minimises the layer's output error ||(W - Q) X||² over
calibration inputs X, using H = 2 X Xᵀ / n. That is what lets 3- and 4-bit codes keep a small model
working where round-to-nearest breaks it. Scales and zero points are chosen first (per channel or
group, as QuantConfig says, from the original weight: "static groups"), so the stored format is the
same as round-to-nearest's; columns are visited in order of decreasing H diagonal ("act order").
Weights that are exactly zero (pruned) stay zero. Calibration data comes from the model's own front
end (`calibration_for`): packed 30 s windows of a dataset, teacher-forced on their transcripts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from core.data import load_dataset, load_waves, pack_utterances
from core.models import SpeechModel

DAMPING = 0.01  # fraction of the mean H diagonal added to it: keeps the Cholesky factorization stable
BLOCK = 128  # columns updated together (GPTQ's lazy batch updates)

# (dataset name or path, number of windows) -> keyword arguments for the model's forward, one dict a window
Calibration = Callable[[str, int], list[dict[str, torch.Tensor]]]


@torch.inference_mode()
def input_hessians(module: nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """H = 2/n · Σ x xᵀ over every input row x of every nn.Linear in `module`, keyed by module name."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def recorder(name: str):
        def record(layer: nn.Module, args: tuple) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return record

    hooks = [
        m.register_forward_pre_hook(recorder(name))
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear)
    ]
    try:
        for batch in batches:
            module(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: 2 * total / counts[name] for name, total in sums.items()}


def gptq_codes(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    bits: int,
    group_size: int | None,
) -> torch.Tensor:
    """uint8 codes (rows, cols) for a (rows, cols) weight, given per-block scales/zeros shaped (rows or 1,
    groups, 1) and the layer's input Hessian (cols, cols); group_size None: one scale column for all."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ValueError(
            f"gptq: a {rows}x{cols} weight needs a {cols}x{cols} Hessian, got {tuple(hessian.shape)}"
        )
    keep = w != 0  # pruned weights stay exactly zero
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0  # inputs never active in calibration: their weights cannot matter there
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += DAMPING * h.diagonal().mean() * torch.eye(cols, dtype=h.dtype)
    order = torch.argsort(h.diagonal(), descending=True)
    h = h[order][:, order]
    try:
        upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()
    except RuntimeError as exc:  # torch.linalg.LinAlgError: H not positive definite even after damping
        raise ValueError(f"gptq: the calibration Hessian is not positive definite ({exc})") from None
    w, keep = w[:, order], keep[:, order]
    block_of = (order // group_size) if group_size else torch.zeros(cols, dtype=torch.long)
    codes = torch.empty(rows, cols, dtype=torch.uint8)
    top = 2**bits - 1
    for start in range(0, cols, BLOCK):
        end = min(start + BLOCK, cols)
        part = w[:, start:end].clone()
        errors = torch.zeros_like(part)
        for i in range(end - start):
            s, z = scale[:, block_of[start + i], 0], zero[:, block_of[start + i], 0]
            column = part[:, i]
            code = torch.where(keep[:, start + i], ((column / s).round() + z).clamp(0, top), z)
            codes[:, order[start + i]] = code.to(torch.uint8)
            error = (column - (code - z) * s) / upper[start + i, start + i]
            part[:, i:] -= error[:, None] * upper[start + i, start + i : end][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ upper[start:end, end:]
    return codes


def calibration_for(model: SpeechModel) -> Calibration:
    """Calibration batches from `model`'s own front end, computed once per (dataset, windows)."""

    @functools.lru_cache(maxsize=2)
    def batches(dataset: str, windows: int) -> list[dict[str, torch.Tensor]]:
        data = load_dataset(dataset)
        texts = [u.text for u in data.utterances]
        packed, references, _ = pack_utterances(load_waves(data), texts, [u.id for u in data.utterances])
        picked = sorted(
            {i * len(packed) // windows for i in range(min(windows, len(packed)))}
        )  # spread over voices
        return [model.calibration_batch(packed[i], references[i]) for i in picked]

    return batches
