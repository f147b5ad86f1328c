"""The fused Pallas additive attention on a GPU: agreement, speed and memory vs XLA.

Run by `benchmarks/gpu_check.sh` (which says how to run it on the device machine):

    python -m benchmarks.gpu_check bench [--smoke] [--out FILE]   # all figures, JSON lines

`bench` measures one AdditiveAttention call, forward + backward (loss = sum of squares of the
context plus a term in the weights; gradients w.r.t. parameters, queries and keys), at the
issue's size B=32, T=S=256, A=512, H=8 with a padding mask of source lengths S/2..S:

- agreement: largest absolute difference of context, weights and every gradient between
  "pallas" and "chunked" (float32, full-precision matmuls), at that size;
- time: median of `--repeats` calls after a warm-up, forward + backward and forward alone,
  for "naive", "chunked" and "pallas", float32 and bfloat16 compute;
- memory: XLA's compiled figures (temp + arguments + outputs) and, on a GPU, the device's
  peak bytes in use so far (the forms run in ascending expected memory, so each figure bounds
  that form's peak from above; the first is exact);
- a sweep of the kernel tiles (block_t, block_s, block_d, warps) on the attention core alone.

`--smoke` shrinks every size so the whole path runs in seconds on CPU (Pallas interpreter):
it checks the script, not the speed. No figure is printed that was not measured in this run.
A part that fails (say, a Triton compile error) is printed as a record with its `error` and
its traceback on stderr, and the other parts still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import median, time_calls
from seq2seq_jax.layers import pallas_attention as pa
from seq2seq_jax.layers.attention import AdditiveAttention

FULL = {"batch": 32, "length": 256, "dim": 512, "heads": 8, "repeats": 10}
SMOKE = {"batch": 2, "length": 24, "dim": 32, "heads": 8, "repeats": 2}
TILES = [(16, 32, 16, 4), (32, 32, 16, 4), (16, 64, 8, 4), (32, 32, 8, 8)]
SMOKE_TILES = [(16, 16, 16, 4), (16, 32, 8, 4)]


def _sizes(smoke: bool) -> dict[str, int]:
    return dict(SMOKE if smoke else FULL)


def _inputs(sizes: dict[str, int], dtype) -> tuple[jax.Array, jax.Array, jax.Array]:
    """query [B, T, A], keys [B, S, A], padding mask [B, T, S] (source lengths S/2..S)."""
    b, t, d = sizes["batch"], sizes["length"], sizes["dim"]
    kq, kk = jax.random.split(jax.random.PRNGKey(0))
    query = jax.random.normal(kq, (b, t, d), dtype)
    keys = jax.random.normal(kk, (b, t, d), dtype)
    lengths = t - jnp.arange(b) % (t // 2 + 1)
    mask = jnp.arange(t)[None, None, :] < lengths[:, None, None]
    return query, keys, jnp.broadcast_to(mask, (b, t, t))


def _module(sizes: dict[str, int], impl: str, dtype) -> AdditiveAttention:
    return AdditiveAttention(sizes["dim"], num_heads=sizes["heads"], dtype=dtype,
                             implementation=impl)


def _grad_fn(attn: AdditiveAttention, mask: jax.Array):
    """jit of (params, query, keys) -> ((loss, (context, weights)), grads)."""

    def loss(params, query, keys):
        ctx, w = attn.apply({"params": params}, query, keys, mask)
        value = jnp.sum(jnp.square(ctx.astype(jnp.float32))) + jnp.sum(w * w)
        return value, (ctx, w)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _setup(sizes, impl, dtype):
    query, keys, mask = _inputs(sizes, dtype)
    attn = _module(sizes, impl, dtype)
    params = attn.init(jax.random.PRNGKey(1), query, keys, mask)["params"]
    return attn, params, query, keys, mask


def agreement(sizes: dict[str, int]) -> dict[str, Any]:
    """Max |pallas - chunked| of outputs and gradients, float32, at full matmul precision."""
    with jax.default_matmul_precision("highest"):
        results = {}
        for impl in ("chunked", "pallas"):
            attn, params, query, keys, mask = _setup(sizes, impl, jnp.float32)
            (_, outs), grads = _grad_fn(attn, mask)(params, query, keys)
            results[impl] = jax.tree.map(np.asarray, (outs, grads))
    diffs = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), results["pallas"],
                         results["chunked"])
    scale = jax.tree.map(lambda a: float(np.abs(a).max()), results["chunked"])
    leaves = jax.tree.leaves(diffs)
    finite = all(np.isfinite(x).all() for x in jax.tree.leaves(results["pallas"]))
    return {"value": max(leaves),
            "unit": "abs", "context_diff": diffs[0][0], "weights_diff": diffs[0][1],
            "grad_diffs": jax.tree.leaves(diffs[1]), "grad_scales": jax.tree.leaves(scale[1]),
            "finite": bool(finite), **sizes}


def measure(sizes, impl, dtype) -> dict[str, Any]:
    """One form: XLA's compiled memory (MiB), median ms of fwd + bwd and of fwd alone, and
    the device's peak bytes in use so far (MiB; None on CPU)."""
    attn, params, query, keys, mask = _setup(sizes, impl, dtype)
    start = time.perf_counter()
    compiled = _grad_fn(attn, mask).lower(params, query, keys).compile()
    record: dict[str, Any] = {"compile_s": round(time.perf_counter() - start, 2)}
    memory = compiled.memory_analysis()
    if memory is not None:
        temp = memory.temp_size_in_bytes / 2**20
        args_out = (memory.argument_size_in_bytes + memory.output_size_in_bytes) / 2**20
        record.update(compiled_temp_mib=round(temp, 1),
                      compiled_total_mib=round(temp + args_out, 1))
    fwd = jax.jit(lambda p, q, k: attn.apply({"params": p}, q, k, mask))
    reps = sizes["repeats"]
    record["fwd_bwd_ms"] = round(median(time_calls(
        lambda: compiled(params, query, keys), repeats=reps)) * 1e3, 3)
    record["fwd_ms"] = round(median(time_calls(
        lambda: fwd(params, query, keys), repeats=reps)) * 1e3, 3)
    stats = jax.devices()[0].memory_stats()
    record["device_peak_so_far_mib"] = (round(stats["peak_bytes_in_use"] / 2**20, 1)
                                        if stats and "peak_bytes_in_use" in stats else None)
    return record


def tile_sweep(sizes, smoke: bool) -> list[dict[str, Any]]:
    """fwd + bwd ms of the attention core for each tiling (float32), best first."""
    b, t, a, h = sizes["batch"], sizes["length"], sizes["dim"], sizes["heads"]
    d = a // h
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    qp = jax.random.normal(k[0], (b, t, h, d))
    kp = jax.random.normal(k[1], (b, t, h, d))
    v = jax.random.normal(k[2], (h, d)) / np.sqrt(d)
    values = jax.random.normal(k[3], (b, t, a))
    _, _, mask = _inputs(sizes, jnp.float32)
    mask4 = mask[:, None]
    rows = []
    for bt, bs, bd, warps in SMOKE_TILES if smoke else TILES:
        cfg = pa.make_config(block_t=bt, block_s=bs, block_d=bd, num_warps=warps)

        def loss(q, kk, vv, x, cfg=cfg):
            ctx, _ = pa.fused_additive_attention(q, kk, vv, mask4, x, config=cfg)
            return jnp.sum(ctx * ctx)

        fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
        row = {"block_t": bt, "block_s": bs, "block_d": bd, "num_warps": warps}
        try:
            jax.block_until_ready(fn(qp, kp, v, values))
            row["fwd_bwd_ms"] = round(median(time_calls(
                lambda fn=fn: fn(qp, kp, v, values), repeats=sizes["repeats"])) * 1e3, 3)
        except Exception as e:  # noqa: BLE001 - a tiling the compiler rejects is a finding
            row["error"] = _error(e)
        rows.append(row)
    return sorted(rows, key=lambda r: r.get("fwd_bwd_ms", float("inf")))


def _emit(record: dict[str, Any], out) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        out.write(line + "\n")
        out.flush()


def _error(e: Exception) -> str:
    """The exception's type and first line, for a JSON record (the traceback goes to stderr)."""
    traceback.print_exc()
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


def bench(smoke: bool, out_path: str | None) -> int:
    """Emits every figure; a failing part is recorded with its error and the rest still runs.

    Returns the number of parts that failed.
    """
    sizes = _sizes(smoke)
    out = open(out_path, "a") if out_path else None  # noqa: SIM115 - closed below
    env = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
           "jax": jax.__version__, "kernel_backend": pa.default_backend(), "smoke": smoke}
    _emit({"name": "environment", **env}, out)
    failed = 0
    parts = [("attention/pallas_vs_chunked/max_abs_diff", lambda: agreement(sizes))]
    # Ascending expected memory: the device's peak counter only grows, so each form's
    # "peak so far" bounds its own peak from above and is exact for the first one.
    for impl, dtype in (("pallas", jnp.bfloat16), ("pallas", jnp.float32),
                        ("chunked", jnp.bfloat16), ("chunked", jnp.float32),
                        ("naive", jnp.bfloat16), ("naive", jnp.float32)):
        name = jnp.dtype(dtype).name
        parts.append((f"attention/{impl}/{name}", lambda impl=impl, dtype=dtype, name=name: {
            "impl": impl, "dtype": name, **sizes, **measure(sizes, impl, dtype)}))
    parts.append(("attention/pallas/tile_sweep",
                  lambda: {"rows": tile_sweep(sizes, smoke), **sizes}))
    for name, part in parts:
        try:
            record = {"name": name, **part()}
        except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
            failed += 1
            record = {"name": name, "error": _error(e), **sizes}
        _emit(record, out)
    if out is not None:
        out.close()
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="every figure, one JSON line each")
    b.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU rehearsal)")
    b.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = parser.parse_args(argv)
    return 1 if bench(args.smoke, args.out) else 0


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
