"""The planner's exact mode: the real model's peaks traced on fake tensors (no GPU, no memory).

`make plan exact=true` prints these beside model/memory.py's formulas, and
tests/model/test_memory.py holds the formulas to them. MemTracker's hooks add
one artefact the formulas leave out: they keep autograd from adding the
embedding's dL/dW into the head's in place, so late in the backward the trace
holds one (V, C) fp32 buffer more than a plain run (seen only when the
micro-batch is tiny against the vocabulary).
"""

from __future__ import annotations

import dataclasses

from model.memory import Workload, loss_kept_bytes, optimizer_state_bytes


def trace_peaks(w: Workload) -> tuple[int, int]:
    """(peak_train, peak_eval) in tensor bytes, traced on fake tensors: no GPU, no real memory.

    Runs model/gpt.py's forward and backward (and a no_grad forward) under
    FakeTensorMode with PyTorch's MemTracker (torch.distributed._tools), on
    the CPU device with CPU autocast in the workload's dtype. It is exact
    about the tensors PyTorch creates in eager mode; it does not see
    torch.compile's graphs, CUDA kernels' private workspaces or the
    allocator's rounding. Optimizer states are added from optimizer_state_bytes
    (the optimizer step itself does not run), and so are, with compile on,
    the chunk logits the compiled lean loss keeps (loss_kept_bytes).
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from model.gpt import GPT

    cfg = w.gpt_config()
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(w.dtype)
    cpu = torch.device("cpu")

    def step(train: bool) -> int:
        with FakeTensorMode():
            model = GPT(cfg).train(train)
            if train:  # the gradients of the previous micro-step are there already
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
            x = torch.zeros((w.micro_batch, w.block_size), dtype=torch.long)
            y = torch.zeros_like(x)
            tracker = MemTracker()
            tracker.track_external(model)
            autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)
            with tracker, torch.set_grad_enabled(train), autocast:
                _, loss = model(x, y)  # cfg.loss: the workload's loss
                if train:
                    assert loss is not None
                    loss.backward()
            peak = tracker.get_tracker_snapshot("peak")[cpu]["Total"]
        return int(peak) + 16 * w.tokens  # + the batch, made before tracking

    compiled_extra = loss_kept_bytes(w) - loss_kept_bytes(dataclasses.replace(w, compile=False))
    train, evals = step(True), step(False)
    return train + optimizer_state_bytes(w) + compiled_extra, evals + optimizer_state_bytes(w)
