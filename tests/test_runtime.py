"""runtime: the CUDA-only switches stay off on a CPU, and say so."""

import logging

import torch
from torch import nn

from selftrain import runtime


def test_compile_is_ignored_on_cpu_and_the_log_says_so(caplog):
    with caplog.at_level(logging.INFO, logger="selftrain"):
        net = runtime.place(nn.Conv2d(1, 2, 3), torch.device("cpu"), compile=True)
    assert not hasattr(net, "_orig_mod")  # torch.compile's wrapper keeps the module there
    assert net.weight.is_contiguous(memory_format=torch.channels_last)
    assert "runtime.compile is for CUDA" in caplog.text
    caplog.clear()
    runtime.place(nn.Conv2d(1, 2, 3), torch.device("cpu"))
    assert "runtime.compile" not in caplog.text
