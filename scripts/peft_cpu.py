"""PEFT's BOFT with butterfly factors on the CPU, for the fixture and round-trip scripts.

Without its CUDA extension (`fbd_cuda`) PEFT's BOFT sets the butterfly factor to 1 whatever
the config says (peft 0.21, tuners/boft/layer.py). `butterfly_on_cpu()` tells it the
extension is there and gives it `CpuBlockDiag`, the extension's block-diagonal assembly
written with torch.block_diag, so PEFT computes every factor as on a GPU.
"""

from __future__ import annotations

import contextlib

import peft.tuners.boft.layer as boft_layer
import torch


class CpuBlockDiag:
    """PEFT's FastBlockDiag on the CPU: [N, D, H, H] -> [N, D·H, D·H]."""

    @staticmethod
    def apply(x):
        return torch.stack([torch.block_diag(*torch.unbind(x[i])) for i in range(x.shape[0])])


@contextlib.contextmanager
def butterfly_on_cpu(on: bool = True):
    saved = boft_layer.get_fbd_cuda, boft_layer.FastBlockDiag
    if on:
        boft_layer.get_fbd_cuda = lambda: True
        boft_layer.FastBlockDiag = CpuBlockDiag
    try:
        yield
    finally:
        boft_layer.get_fbd_cuda, boft_layer.FastBlockDiag = saved
