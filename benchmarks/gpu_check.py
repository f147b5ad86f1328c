"""The GPU check's figures (issue 16): environment, benchmark harness, Pallas kernel, verdict.

Run by `benchmarks/gpu_check.sh` (which says how to run it on the device machine); every
subcommand appends JSON lines to `--out` (the script's one `gpu_check.jsonl`):

    python -m benchmarks.gpu_check env [--smoke] [--out FILE]       # versions, device, peers
    python -m benchmarks.gpu_check harness [--smoke] [--out FILE]   # the benchmark harness
    python -m benchmarks.gpu_check bench [--smoke] [--out FILE]     # the Pallas kernel
    python -m benchmarks.gpu_check verdict --junit X --rc N [--out FILE]  # kernel on the GPU?
    python -m benchmarks.gpu_check workdir --workdir D --inputs F --outputs F [--out FILE]

`harness` is the project's benchmark harness (`benchmarks.matmul_peak`, `train_bench`,
`decode_bench`, `peer`; the same code as `python -m benchmarks.run`) at the issue's sizes
(`benchmarks.settings.FULL`; `--smoke`: `TINY`): the bf16 matmul rate first (the MFU
denominator, `fraction_of_matmul_peak` with `peak_dtype`), then train tokens/s, step time,
model FLOP/s, MFU and compile time of RNNsearch, the Transformer-additive and (last) the
Transformer with dot-product cross-attention, float32 and bfloat16 (names `*_bf16`); greedy and
beam-5 sentences/s of RNNsearch and the Transformer-additive, float32 and bfloat16; and the
PyTorch peers (`--peer-dir`, default `benchmarks/peers`) on the same device in the same run
(`--peer-device`, default cuda on a GPU), so each of those figures has its `peer_value` and
`ratio`. The peers run in float32 (TF32 matmuls on a GPU, as JAX's default precision there):
our bfloat16 figures are compared with them and say so (`peer_dtype`).

`bench` (below) is the fused Pallas additive attention against XLA:

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
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import decode_bench, matmul_peak, train_bench
from benchmarks import peer as peer_lib
from benchmarks.settings import PRESETS
from benchmarks.timing import median, time_calls
from seq2seq_jax.layers import attention as attention_lib
from seq2seq_jax.layers import pallas_attention as pa
from seq2seq_jax.layers.attention import AdditiveAttention

ROOT = Path(__file__).resolve().parents[1]
PEERS_DIR = ROOT / "benchmarks" / "peers"  # verbatim copies of ../shared/bench (README there)
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "flax",
    "optax",
    "orbax-checkpoint",
    "chex",
    "numpy",
    "ml-dtypes",
    "triton",
    "torch",
    "sentencepiece",
    "sacrebleu",
    "protobuf",
    "etils",
    "tensorflow-datasets",
    "grain",
    "array-record",
    "ml-collections",
    "tensorboardX",
    "importlib-resources",
    "pytest",
    "pytest-xdist",
)
# Harness: matmul sides (bf16 first: the MFU denominator), train models in order of value.
MATMUL = {"gpu": ((16384, 20), (8192, 10)), "other": ((2048, 5), (2048, 5))}
TRAIN_FIRST = ("rnnsearch", "transformer")
TRAIN_LAST = ("transformer_dot",)  # the part-2 comparison: additive vs dot cross-attention
DECODE = ("rnnsearch", "transformer")

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
    return AdditiveAttention(
        sizes["dim"], num_heads=sizes["heads"], dtype=dtype, implementation=impl
    )


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
    diffs = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()), results["pallas"], results["chunked"]
    )
    scale = jax.tree.map(lambda a: float(np.abs(a).max()), results["chunked"])
    leaves = jax.tree.leaves(diffs)
    finite = all(np.isfinite(x).all() for x in jax.tree.leaves(results["pallas"]))
    return {
        "value": max(leaves),
        "unit": "abs",
        "context_diff": diffs[0][0],
        "weights_diff": diffs[0][1],
        "grad_diffs": jax.tree.leaves(diffs[1]),
        "grad_scales": jax.tree.leaves(scale[1]),
        "finite": bool(finite),
        **sizes,
    }


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
        record.update(
            compiled_temp_mib=round(temp, 1), compiled_total_mib=round(temp + args_out, 1)
        )
    fwd = jax.jit(lambda p, q, k: attn.apply({"params": p}, q, k, mask))
    reps = sizes["repeats"]
    record["fwd_bwd_ms"] = round(
        median(time_calls(lambda: compiled(params, query, keys), repeats=reps)) * 1e3, 3
    )
    record["fwd_ms"] = round(
        median(time_calls(lambda: fwd(params, query, keys), repeats=reps)) * 1e3, 3
    )
    stats = jax.devices()[0].memory_stats()
    record["device_peak_so_far_mib"] = (
        round(stats["peak_bytes_in_use"] / 2**20, 1)
        if stats and "peak_bytes_in_use" in stats
        else None
    )
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
            row["fwd_bwd_ms"] = round(
                median(time_calls(lambda fn=fn: fn(qp, kp, v, values), repeats=sizes["repeats"]))
                * 1e3,
                3,
            )
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
    env = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "kernel_backend": pa.default_backend(),
        "smoke": smoke,
    }
    _emit({"name": "attention/environment", **env}, out)
    failed = 0
    parts = [("attention/pallas_vs_chunked/max_abs_diff", lambda: agreement(sizes))]
    # Ascending expected memory: the device's peak counter only grows, so each form's
    # "peak so far" bounds its own peak from above and is exact for the first one.
    for impl, dtype in (
        ("pallas", jnp.bfloat16),
        ("pallas", jnp.float32),
        ("chunked", jnp.bfloat16),
        ("chunked", jnp.float32),
        ("naive", jnp.bfloat16),
        ("naive", jnp.float32),
    ):
        name = jnp.dtype(dtype).name
        parts.append(
            (
                f"attention/{impl}/{name}",
                lambda impl=impl, dtype=dtype, name=name: {
                    "impl": impl,
                    "dtype": name,
                    **sizes,
                    **measure(sizes, impl, dtype),
                },
            )
        )
    parts.append(
        ("attention/pallas/tile_sweep", lambda: {"rows": tile_sweep(sizes, smoke), **sizes})
    )
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


def _run_parts(parts: list[tuple[str, Callable[[], Any]]], out) -> int:
    """Runs each part, emitting its record(s); a failing part is recorded with its error.

    A part returns one record (a dict, named by the part) or a list of figures (each named).
    Returns the number of parts that failed.
    """
    failed = 0
    for name, part in parts:
        start = time.perf_counter()
        try:
            result = part()
        except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
            failed += 1
            _emit(
                {
                    "name": name,
                    "error": _error(e),
                    "seconds": round(time.perf_counter() - start, 1),
                },
                out,
            )
            continue
        for record in result if isinstance(result, list) else [{"name": name, **result}]:
            _emit(record, out)
    return failed


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _command_output(command: list[str]) -> str | None:
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=20, cwd=ROOT, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def environment(smoke: bool) -> dict[str, Any]:
    """Versions, devices, JAX settings, the GPU (nvidia-smi) and the peers' checksums."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    peers = {}
    for path in sorted(PEERS_DIR.glob("torch_*.py")):
        original = peer_lib.DEFAULT_PEER_DIR / path.name
        peers[path.name] = {
            "sha256": _sha256(path),
            "matches_shared": (_sha256(original) == _sha256(path) if original.is_file() else None),
        }
    smi = _command_output(
        [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit",
            "--format=csv,noheader",
        ]
    )
    return {
        "smoke": smoke,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "device_memory_gib": (
            round(stats["bytes_limit"] / 2**30, 1) if "bytes_limit" in stats else None
        ),
        "nvidia_smi": smi,
        "versions": versions,
        "kernel_backend": pa.default_backend(),
        "pallas_auto_verified": attention_lib.PALLAS_AUTO_VERIFIED,
        "git_commit": _command_output(["git", "rev-parse", "HEAD"]),
        "env": {
            k: os.environ[k]
            for k in (
                "JAX_PLATFORMS",
                "XLA_FLAGS",
                "JAX_DEFAULT_MATMUL_PRECISION",
                "XLA_PYTHON_CLIENT_PREALLOCATE",
                "CUDA_VISIBLE_DEVICES",
            )
            if k in os.environ
        },
        "peers": peers,
    }


def verdict(junit: str, rc: int) -> dict[str, Any]:
    """Whether a pytest run passed on a GPU: for tests/test_pallas_attention.py, whether the
    Pallas kernels are verified there ("pallas/gpu_verified"; the GPU subset uses it too).

    True only on a GPU backend, with pytest's exit code 0, at least one test passed and none
    failed, errored or skipped (a skipped Triton test proves nothing).
    """
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    reason = None
    try:
        root = ET.parse(junit).getroot()
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    except (OSError, ET.ParseError) as e:
        reason = f"no test report ({type(e).__name__}: {e})"
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    backend = jax.default_backend()
    if reason is None:
        if backend != "gpu":
            reason = f"backend is {backend}, not gpu: the interpreter, not the GPU kernels, ran"
        elif rc != 0 or counts["failures"] or counts["errors"]:
            reason = f"pytest exit {rc}, {counts['failures']} failed, {counts['errors']} errors"
        elif counts["skipped"] or counts["passed"] <= 0:
            reason = f"{counts['skipped']} skipped, {counts['passed']} passed"
    return {
        "value": reason is None,
        "unit": "bool",
        "reason": reason,
        "backend": backend,
        "device_kind": jax.devices()[0].device_kind,
        "pytest_rc": rc,
        **counts,
        "kernel_backend": pa.default_backend(),
        "pallas_auto_verified": attention_lib.PALLAS_AUTO_VERIFIED,
    }


def workdir_record(workdir: str, inputs: str, outputs: str) -> dict[str, Any]:
    """The tiny trained workdir's last logged metrics and its decoded lines."""
    metrics = Path(workdir) / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    records = [json.loads(x) for x in lines]
    last_train = next((r for r in reversed(records) if "train_loss" in r), None)
    srcs = Path(inputs).read_text().splitlines()
    outs = Path(outputs).read_text().splitlines()
    if len(outs) != len(srcs):
        raise RuntimeError(f"{len(srcs)} input lines but {len(outs)} output lines")
    return {
        "backend": jax.default_backend(),
        "metrics_lines": len(lines),
        "last_metrics": records[-1] if records else None,
        "last_train_metrics": last_train,
        "inputs": srcs,
        "outputs": outs,
    }


def _rename(
    figures: list[dict[str, Any]], family: str, suffix: str, **extra: Any
) -> list[dict[str, Any]]:
    """train/FAMILY/x -> train/FAMILY_SUFFIX/x, with `extra` keys added to every figure."""
    renamed = []
    for record in figures:
        record = dict(record)
        if suffix:
            record["name"] = record["name"].replace(f"/{family}/", f"/{family}_{suffix}/", 1)
        record.update(extra)
        renamed.append(record)
    return renamed


def harness(smoke: bool, out, peer_dir: str, peer_device: str | None) -> int:
    """The benchmark harness on this device (see the module docstring); failed parts."""
    settings = PRESETS["tiny" if smoke else "full"]
    backend = jax.default_backend()
    device = peer_device or ("cuda" if backend == "gpu" else "cpu")
    precision = "high" if device != "cpu" else ""
    peak: dict[str, float] = {}
    peers: dict[str, dict[str, Any]] = {}  # peer name -> mode -> record
    (bf16_size, bf16_reps), (f32_size, f32_reps) = MATMUL["gpu" if backend == "gpu" else "other"]
    if smoke:
        bf16_size = f32_size = settings.matmul_size

    def matmul(dtype: str, size: int, reps: int):
        figures = matmul_peak.run(size, reps, dtypes=(dtype,))
        peak[dtype] = figures[0]["value"] * 1e9
        return [dict(f, backend=backend) for f in figures]

    def run_peer(name: str):
        cfg = train_bench.model_config(name, settings)
        peers[name] = peer_lib.run_peer(
            name,
            settings,
            cfg,
            modes=("all",),
            directory=Path(peer_dir),
            timeout_s=240,
            device=device,
            float32_matmul_precision=precision,
        )
        return {"device": device, "records": peers[name]}

    peer_note = {
        "peer_device": device,
        "peer_dtype": "float32",
        "peer_float32_matmul_precision": precision or "torch default",
    }

    def train(family: str, dtype: str):
        peer = peers.get(peer_lib.PEER_OF[family], {}).get("train")
        overrides = {} if dtype == "float32" else {"dtype": dtype}
        figures = train_bench.run(
            settings,
            families=(family,),
            peak_flops=peak.get("bfloat16"),
            peers={family: peer} if peer else None,
            **overrides,
        )
        extra = {"dtype": dtype, "peak_dtype": "bfloat16", "backend": backend}
        if peer:
            extra.update(peer_note)
        return _rename(figures, family, "" if dtype == "float32" else "bf16", **extra)

    def decode(family: str):
        peer = peers.get(peer_lib.PEER_OF[family])
        figures = decode_bench.run(
            settings, families=(family,), peers={family: peer} if peer else None
        )
        return [dict(f, backend=backend, **(peer_note if peer else {})) for f in figures]

    parts: list[tuple[str, Callable[[], Any]]] = [
        ("matmul_peak/bfloat16", lambda: matmul("bfloat16", bf16_size, bf16_reps)),
        ("matmul_peak/float32", lambda: matmul("float32", f32_size, f32_reps)),
    ]
    parts += [
        (f"peer/{name}", lambda name=name: run_peer(name)) for name in ("rnnsearch", "transformer")
    ]
    parts += [
        (
            f"train/{family}{'' if dtype == 'float32' else '_bf16'}",
            lambda family=family, dtype=dtype: train(family, dtype),
        )
        for dtype in ("float32", "bfloat16")
        for family in TRAIN_FIRST
    ]
    parts += [(f"decode/{family}", lambda family=family: decode(family)) for family in DECODE]
    parts += [
        (
            f"train/{family}{'' if dtype == 'float32' else '_bf16'}",
            lambda family=family, dtype=dtype: train(family, dtype),
        )
        for family in TRAIN_LAST
        for dtype in ("float32", "bfloat16")
    ]
    return _run_parts(parts, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {}
    for name, text in (
        ("bench", "the Pallas kernel's figures"),
        ("harness", "the benchmark harness on this device"),
        ("env", "versions, device, peers"),
        ("verdict", "did the kernel pass its tests on a GPU"),
        ("workdir", "a tiny trained workdir's metrics and decoded lines"),
    ):
        commands[name] = sub.add_parser(name, help=text)
        commands[name].add_argument(
            "--smoke", action="store_true", help="tiny sizes (a CPU rehearsal)"
        )
        commands[name].add_argument(
            "--out", default=None, help="also append the JSON lines to this file"
        )
    commands["harness"].add_argument("--peer-dir", default=str(PEERS_DIR))
    commands["harness"].add_argument(
        "--peer-device", default=None, help="torch device of the peers (default: cuda on a GPU)"
    )
    commands["verdict"].add_argument(
        "--name", default="pallas/gpu_verified", help="the record's name"
    )
    commands["verdict"].add_argument("--junit", required=True, help="pytest's --junitxml file")
    commands["verdict"].add_argument("--rc", type=int, required=True, help="pytest's exit code")
    for flag in ("--workdir", "--inputs", "--outputs"):
        commands["workdir"].add_argument(flag, required=True)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return 1 if bench(args.smoke, args.out) else 0
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed below
    try:
        if args.command == "harness":
            return 1 if harness(args.smoke, out, args.peer_dir, args.peer_device) else 0
        if args.command == "env":
            part = ("environment", lambda: environment(args.smoke))
        elif args.command == "verdict":
            part = (args.name, lambda: verdict(args.junit, args.rc))
        else:
            part = ("workdir/tiny", lambda: workdir_record(args.workdir, args.inputs, args.outputs))
        return 1 if _run_parts([part], out) else 0
    finally:
        if out is not None:
            out.close()


if __name__ == "__main__":
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
