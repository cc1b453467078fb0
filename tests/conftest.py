import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sys  # noqa: E402

if "triton" not in sys.modules:
    import torch as _torch

    if not _torch.cuda.is_available():
        # Triton kernels run on CPU through the interpreter; it must be chosen before triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Test tensors are small: intra-op threads only add contention on a 2-core CI machine.
    (Subprocess tests — CLI, 2-process DDP — set their own threads.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
