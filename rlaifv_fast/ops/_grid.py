"""The label grid, in one place: with shift=True, logits position t predicts label t + 1, so a sequence of T
positions has T - 1 scored positions (never fewer than 0); a position counts when its label is not ignore_index; a
per-sequence mean divides by max(count, 1), so an all-masked row gives 0, never NaN."""

from __future__ import annotations

import torch


def grid_length(T: int, shift: bool) -> int:
    return max(T - 1, 0) if shift else T


def label_grid(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """The labels each scored position predicts (a view)."""
    return labels[:, 1:] if shift else labels


def scored(labels: torch.Tensor, shift: bool, ignore_index: int) -> torch.Tensor:
    """(B, T') bool: the positions that count."""
    return label_grid(labels, shift) != ignore_index


def per_sequence(totals: torch.Tensor, counts: torch.Tensor, average: bool) -> torch.Tensor:
    """Sums, or means over the counted positions (0 for a row without any)."""
    return totals / counts.clamp(min=1) if average else totals
