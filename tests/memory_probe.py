"""Measure the allocation peak of one ``specc train``-style training step on the CPU (tests and
``benchmarks/bench_memory.py``).

``torch.profiler`` with ``profile_memory=True`` records every allocation and free of torch's CPU
allocator with a timestamp; the running sum of those events, started from the bytes alive when
profiling starts (parameters, optimizer state and the batch, counted exactly from their storages),
gives the peak. This is the CPU counterpart of ``torch.cuda.max_memory_allocated``: it sees every
tensor torch allocates, temporaries inside ops included, which a tracker of op outputs (a
``TorchDispatchMode``) would miss. The step is specc's: its optimizer and loss, ``zero_grad``,
forward, loss, backward, the non-finite check, ``optimizer.step()``; it is measured after a first
step has created the optimizer state. ``zero_grad`` runs just before the profiled window: the
profiler cannot count the release of a block allocated before it started.
"""

from __future__ import annotations

import gc

import torch

from specc.graph import Graph
from specc.nn import build


def storages_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views and shared tensors once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def live_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: list[torch.Tensor]) -> int:
    tensors = [*model.parameters(), *model.buffers(), *batch]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return storages_bytes(tensors)


def sample_batch(graph: Graph, batch: int, gen: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random inputs for ``graph`` at nominal sizes, and class/token targets for its first output."""
    ctx_dims = dict(graph.dims)

    def size(d: int | str) -> int:
        return d if isinstance(d, int) else ctx_dims[d]

    xs = []
    for name, t in graph.inputs.items():
        shape = (batch, *(size(d) for d in t.shape))
        if t.dtype == "float32":
            xs.append(torch.randn(shape, generator=gen))
        elif t.dtype == "bool":
            xs.append(torch.ones(shape, dtype=torch.bool))
        else:
            xs.append(torch.randint(0, graph.index_bound(name) or 30, shape, generator=gen))
    out = next(iter(graph.output_types().values()))
    classes = size(out.shape[-1])
    target_shape = (batch, *(size(d) for d in out.shape[:-1]))
    return xs, torch.randint(1, classes, target_shape, generator=gen)


def measured_peak(graph: Graph, batch: int, optimizer: str = "adamw", amp: str = "none") -> dict[str, int]:
    """Peak bytes of one steady-state training step, and the peak of each phase."""
    from torch.profiler import ProfilerActivity, profile, record_function

    from specc.lang.train_config import TrainConfig
    from specc.train.objectives import make_loss
    from specc.train.optim import make_optimizer

    torch.manual_seed(0)
    model = build(graph).train()
    cfg = TrainConfig(optimizer=optimizer)  # type: ignore[arg-type]
    opt = make_optimizer(model.parameters(), cfg, torch.device("cpu"))
    out_type = next(iter(graph.output_types().values()))
    loss_fn, _ = make_loss("lm" if out_type.rank > 1 else "cross_entropy", cfg)
    xs, y = sample_batch(graph, batch, torch.Generator().manual_seed(0))
    params = [p for p in model.parameters() if p.requires_grad]
    one = torch.ones(())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def step() -> None:
        with record_function("phase:forward"):
            with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
                out = model(*xs)
            if isinstance(out, tuple):
                out = out[0]
            loss = loss_fn(out, y)
            del out
        with record_function("phase:backward"):
            loss.backward()
        with record_function("phase:optimizer"):
            flag = torch.zeros(1)
            torch._amp_foreach_non_finite_check_and_unscale_(
                [p.grad for p in params if p.grad is not None], flag, one
            )
            opt.step()

    step()  # creates the optimizer state
    # zero_grad before profiling: the profiler cannot see a block allocated before it started being
    # freed, so freeing the last step's gradients inside the window would be lost from the sum
    opt.zero_grad(set_to_none=True)
    gc.collect()
    baseline = live_tensors(model, opt, [*xs, y])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.profiler.kineto_results.events()  # type: ignore[union-attr]
    allocs = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    windows = {
        e.name().split(":", 1)[1]: (e.start_ns(), e.start_ns() + e.duration_ns())
        for e in events
        if e.name().startswith("phase:")
    }
    running, peak = baseline, baseline
    phase_peak = dict.fromkeys(windows, 0)
    for t, nbytes in allocs:
        running += nbytes
        peak = max(peak, running)
        for name, (a, b) in windows.items():
            if a <= t <= b:
                phase_peak[name] = max(phase_peak[name], running)
    return {"peak": peak, "baseline": baseline, **phase_peak}
