"""Benchmark fewstep's JVP flash attention against PyTorch SDPA, the MATH JVP and jvp-flash-attention.

    python benchmarks/jvp_attention.py                       # full sweep + end-to-end (H100: ~10 min)
    python benchmarks/jvp_attention.py --seq-lens 1024 4096 --no-end-to-end

Per (head dim, N), on the same bf16 inputs (B=2, H=16): milliseconds, multiple of one SDPA forward,
peak extra memory, and max relative error of o and tO against an fp32 MATH reference on a subset of
query rows (rows are independent, so the subset is exact). Then torch.func.jvp through a ~100M-param
SD3-style transformer at 4096 tokens: fewstep processors vs diffusers' processors on MATH.
Writes JSON to benchmarks/results/. Needs a CUDA GPU: exits with status 2 otherwise.

    TRITON_INTERPRET=1 python benchmarks/jvp_attention.py --device cpu --seq-lens 40 --head-dims 32 --batch 1 \
        --heads 2 --e2e-sample-size 4 --e2e-layers 1 --e2e-heads 2 --out /tmp/jvp_dry_run

is a dry run of every code path on CPU, through Triton's interpreter (its timings mean nothing and its JSON says
"dry_run": true), so the one GPU run a lent machine allows does not fail on a bug the CPU could have shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

try:
    import fewstep  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fewstep.kernels.jvp_attention import IMPL_ENV  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REF_ROWS = 512  # reference rows at each end of the sequence


def measure(fn: Callable[[], Any], sdpa_ms: float | None) -> dict[str, Any]:
    """Median ms (triton.testing.do_bench) and peak memory above what was allocated before the call; on a CPU dry run
    one wall-clock call after a warm-up one, and no memory figure."""
    import triton.testing

    if not torch.cuda.is_available():
        fn()
        start = time.perf_counter()
        fn()
        ms = 1e3 * (time.perf_counter() - start)
        return {"ms": round(ms, 4), "x_sdpa_forward": round(ms / sdpa_ms, 2) if sdpa_ms else 1.0}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        ms = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"ms": None, "status": "OOM"}
    return {"ms": round(ms, 4), "peak_extra_mib": round(peak, 1),
            "x_sdpa_forward": round(ms / sdpa_ms, 2) if sdpa_ms else 1.0}


def reference_rows(q, k, v, tangents, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """fp32 MATH (o, tO) for the selected query rows only."""
    def fn(a, b, c):  # noqa: ANN001, ANN202
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(a, b, c)

    sel = (q[:, :, rows].float(), k.float(), v.float())
    return torch.func.jvp(fn, sel, (tangents[0][:, :, rows].float(), tangents[1].float(), tangents[2].float()))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.float() - ref).abs().max() / ref.abs().max())


def sdpa_backward(q, k, v, do, ref_ms: float) -> dict[str, Any]:  # noqa: ANN001
    """PyTorch SDPA's backward alone (its graph is freed on return, before the next, larger measurement)."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    o_sdpa = F.scaled_dot_product_attention(*leaves)
    return measure(lambda: torch.autograd.grad(o_sdpa, leaves, do, retain_graph=True), ref_ms)


def bench_shape(batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype, device: str) -> dict[str, Any]:
    from fewstep.kernels import attention

    ops = torch.ops.fewstep
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v, tq, tk, tv, do = (torch.randn(batch, heads, n, head_dim, device=device, dtype=dtype, generator=gen)
                               for _ in range(7))
    scale = 1.0 / math.sqrt(head_dim)
    row = {"N": n, "D": head_dim, "B": batch, "H": heads, "dtype": str(dtype)}
    sdpa = measure(lambda: F.scaled_dot_product_attention(q, k, v), None)
    row["sdpa_forward"] = sdpa
    ref_ms = sdpa["ms"]
    o, lse = ops.attention_fwd(q, k, v, None, scale)
    row["fewstep_forward"] = measure(lambda: ops.attention_fwd(q, k, v, None, scale), ref_ms)
    row["fewstep_forward_jvp_fused"] = measure(lambda: ops.attention_fwd_jvp(q, k, v, tq, tk, tv, None, scale), ref_ms)
    row["fewstep_func_jvp"] = measure(lambda: torch.func.jvp(attention, (q, k, v), (tq, tk, tv)), ref_ms)
    row["fewstep_backward"] = measure(lambda: ops.attention_bwd(do, None, q, k, v, None, o, lse, scale), ref_ms)
    row["sdpa_backward"] = sdpa_backward(q, k, v, do, ref_ms)

    def math_jvp():  # noqa: ANN202
        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(F.scaled_dot_product_attention, (q, k, v), (tq, tk, tv))

    row["math_func_jvp"] = measure(math_jvp, ref_ms)

    rows = (torch.arange(n) if n <= 2 * REF_ROWS else  # REF_ROWS at each end
            torch.cat([torch.arange(REF_ROWS), torch.arange(n - REF_ROWS, n)])).to(device)
    o_ref, to_ref = reference_rows(q, k, v, (tq, tk, tv), rows)
    o_fused, to_fused, _, _ = ops.attention_fwd_jvp(q, k, v, tq, tk, tv, None, scale)
    o_auto, to_auto = torch.func.jvp(attention, (q, k, v), (tq, tk, tv))
    row["error_vs_fp32"] = {
        "fused": {"o": rel_err(o_fused[:, :, rows], o_ref), "to": rel_err(to_fused[:, :, rows], to_ref)},
        "func_jvp": {"o": rel_err(o_auto[:, :, rows], o_ref), "to": rel_err(to_auto[:, :, rows], to_ref)}}
    try:
        from jvp_flash_attention.jvp_attention import attention as package_attention
    except ImportError:
        row["jvp_flash_attention"] = {"status": "not installed"}
    else:
        row["jvp_flash_attention"] = measure(lambda: torch.func.jvp(package_attention, (q, k, v), (tq, tk, tv)), ref_ms)
        o_pkg, to_pkg = torch.func.jvp(package_attention, (q, k, v), (tq, tk, tv))
        row["error_vs_fp32"]["jvp_flash_attention"] = {"o": rel_err(o_pkg[:, :, rows], o_ref),
                                                       "to": rel_err(to_pkg[:, :, rows], to_ref)}
    return row


def end_to_end(dtype: torch.dtype, batch: int, device: str, sample_size: int = 128, layers: int = 5,
               heads: int = 12) -> dict[str, Any]:
    """torch.func.jvp through an SD3-style joint-attention transformer at (sample_size / 2)^2 image tokens (4096 by
    default) + 77 text; 5 layers of 12 heads make it ~100M parameters."""
    from diffusers import SD3Transformer2DModel

    from fewstep.kernels import jvp_attention_enabled

    model = SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=16, out_channels=16,
                                  num_layers=layers, attention_head_dim=64, num_attention_heads=heads,
                                  joint_attention_dim=768, caption_projection_dim=64 * heads, pooled_projection_dim=768,
                                  pos_embed_max_size=sample_size).to(device, dtype).eval().requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(0)
    x, tx = (torch.randn(batch, 16, sample_size, sample_size, device=device, dtype=dtype, generator=gen)
             for _ in range(2))
    text = torch.randn(batch, 77, 768, device=device, dtype=dtype, generator=gen)
    pooled = torch.randn(batch, 768, device=device, dtype=dtype, generator=gen)
    t = torch.full((batch,), 500.0, device=device)

    def fn(xt):  # noqa: ANN001, ANN202
        return model(xt, encoder_hidden_states=text, pooled_projections=pooled, timestep=t).sample

    def math_jvp():  # noqa: ANN202
        with sdpa_kernel(SDPBackend.MATH):
            return torch.func.jvp(fn, (x,), (tx,))

    result: dict[str, Any] = {"params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                              "tokens": (sample_size // 2) ** 2 + 77, "batch": batch}
    result["sdpa_forward"] = measure(lambda: fn(x), None)
    result["math_func_jvp"] = measure(math_jvp, result["sdpa_forward"]["ms"])
    with jvp_attention_enabled(model):
        result["fewstep_func_jvp"] = measure(lambda: torch.func.jvp(fn, (x,), (tx,)), result["sdpa_forward"]["ms"])
        _, to_fewstep = torch.func.jvp(fn, (x,), (tx,))
    if result["math_func_jvp"].get("ms") is not None:
        result["tangent_rel_diff_fewstep_vs_math"] = rel_err(to_fewstep, math_jvp()[1].float())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--no-end-to-end", action="store_true")
    parser.add_argument("--e2e-sample-size", type=int, default=128, help="latent side of the end-to-end model")
    parser.add_argument("--e2e-layers", type=int, default=5, help="transformer blocks of the end-to-end model")
    parser.add_argument("--e2e-heads", type=int, default=12, help="attention heads (of 64) of the end-to-end model")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a dry run through Triton's interpreter (needs TRITON_INTERPRET=1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    dry_run = args.device == "cpu"
    if dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        print("--device cpu is a dry run through Triton's interpreter: set TRITON_INTERPRET=1 before starting "
              "python (the kernels are decorated at import).", file=sys.stderr)
        return 2
    if not dry_run and not torch.cuda.is_available():
        print("benchmarks/jvp_attention.py needs a CUDA GPU (the Triton kernels compile for GPUs only; "
              "on CPU fewstep falls back to MATH attention, which this benchmark is not about). "
              "--device cpu with TRITON_INTERPRET=1 dry-runs it.", file=sys.stderr)
        return 2
    import triton

    # a dry run sends the CPU tensors through the kernels, not MATH, and leaves the environment as it found it
    with mock.patch.dict(os.environ, {IMPL_ENV: "triton"} if dry_run else {}):
        path = run(args, dry_run, triton.__version__)
    print(f"wrote {path}")
    return 0


def run(args: argparse.Namespace, dry_run: bool, triton_version: str) -> Path:
    dtype = torch.bfloat16
    report: dict[str, Any] = {
        "device": "cpu (Triton interpreter)" if dry_run else torch.cuda.get_device_name(), "dry_run": dry_run,
        "torch": torch.__version__, "triton": triton_version,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]), "kernels": []}
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in report["device"]).strip("-").lower()
    path = args.out / f"jvp_attention-{slug}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    for head_dim in args.head_dims:
        for n in args.seq_lens:
            row = bench_shape(args.batch, args.heads, n, head_dim, dtype, args.device)
            report["kernels"].append(row)
            path.write_text(json.dumps(report, indent=2))  # after every row: a run cut short keeps what it measured
            print(json.dumps({key: row[key] for key in ("N", "D")} | {
                name: row[name].get("x_sdpa_forward", row[name].get("status"))
                for name in row if isinstance(row[name], dict) and ("ms" in row[name] or "status" in row[name])}))
    if not args.no_end_to_end:
        report["end_to_end"] = end_to_end(dtype, args.batch, args.device, args.e2e_sample_size, args.e2e_layers,
                                          args.e2e_heads)
        print(json.dumps(report["end_to_end"]))
    path.write_text(json.dumps(report, indent=2))
    return path


if __name__ == "__main__":
    sys.exit(main())
