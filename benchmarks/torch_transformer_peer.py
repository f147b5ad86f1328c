#!/usr/bin/env python3
"""Times the PyTorch Transformer peer (shared/bench/torch_transformer.py) like torch_rnnsearch.py.

torch_transformer.py defines the model and its greedy / beam search but has no timing entry
point; this script is that entry point, written as torch_rnnsearch.py's `main` is (same batch,
Adam + clipping at 1.0, same JSON lines), so `benchmarks.run` can run both peers the same way.
It imports the peer from `--peer-dir` and needs torch; it is never imported by the package.

`--device cuda` runs a peer on a GPU (neither peer file has a device option): the model and the
batch are moved there and torch's default device is set to it, so the peers' own search
functions create their tensors there too; every timing is closed by `torch.cuda.synchronize`.
`--family rnnsearch` times torch_rnnsearch.py's model and searches the same way (on CPU,
`benchmarks.peer` runs that file's own `main` instead). `--float32-matmul-precision high`
lets float32 matmuls use TF32, as JAX's default precision does on a GPU.

Usage: python torch_transformer_peer.py --peer-dir DIR [--family transformer|rnnsearch]
       [--mode train|greedy|beam|all] [--device cpu|cuda] [--float32-matmul-precision P]
       [--vocab 8000] [--d-model 256] [--layers 3] [--heads 4] [--ff 1024] [--emb 256]
       [--hidden 512] [--batch 64] [--src-len 32] [--tgt-len 32] [--steps 10] [--beam 5]
       [--threads N]
"""

import argparse
import json
import sys
import time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-dir", required=True)
    p.add_argument("--family", default="transformer", choices=["transformer", "rnnsearch"])
    p.add_argument("--mode", default="all", choices=["train", "greedy", "beam", "all"])
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:0, ...)")
    p.add_argument(
        "--float32-matmul-precision",
        default="",
        choices=["", "highest", "high", "medium"],
        help="torch.set_float32_matmul_precision ('' keeps torch's default)",
    )
    for name, default in (
        ("vocab", 8000),
        ("d-model", 256),
        ("layers", 3),
        ("heads", 4),
        ("ff", 1024),
        ("emb", 256),
        ("hidden", 512),
        ("batch", 64),
        ("src-len", 32),
        ("tgt-len", 32),
        ("steps", 10),
        ("beam", 5),
        ("threads", 0),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    return p.parse_args()


def timed(fn, repeats: int, sync=lambda: None) -> float:
    """Seconds per call after one warm-up call (`sync` waits for the device's queued work)."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    a = parse_args()
    sys.path.insert(0, a.peer_dir)
    import torch
    import torch.nn.functional as F
    import torch_rnnsearch
    from torch_rnnsearch import PAD

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.float32_matmul_precision:
        torch.set_float32_matmul_precision(a.float32_matmul_precision)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    if a.family == "transformer":
        import torch_transformer as peer

        model = peer.TransformerSeq2Seq(a.vocab, a.d_model, a.layers, a.heads, a.ff)
    else:
        peer = torch_rnnsearch
        model = peer.RNNsearch(a.vocab, a.emb, a.hidden)
    gen = torch.Generator().manual_seed(0)  # the peers' batch, drawn on CPU, then moved
    src = torch.randint(3, a.vocab, (a.batch, a.src_len), generator=gen)
    lengths = torch.randint(a.src_len // 2, a.src_len + 1, (a.batch,), generator=gen)
    src_mask = torch.arange(a.src_len)[None, :] < lengths[:, None]
    src = src.masked_fill(~src_mask, PAD)
    tgt = torch.randint(3, a.vocab, (a.batch, a.tgt_len + 1), generator=gen)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    if device.type != "cpu":
        model = model.to(device)
        src, src_mask, tgt_in, tgt_out = (x.to(device) for x in (src, src_mask, tgt_in, tgt_out))
        torch.set_default_device(device)  # the peers' searches create tensors without a device
    common = {
        "params": sum(p.numel() for p in model.parameters()),
        "batch": a.batch,
        "src_len": a.src_len,
        "tgt_len": a.tgt_len,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type != "cpu":
        common.update(
            device=str(device),
            family=a.family,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    if a.mode in ("train", "all"):
        opt = torch.optim.Adam(model.parameters(), 1e-3)

        def train_step():
            opt.zero_grad(set_to_none=True)
            logits = model(src, src_mask, tgt_in)
            loss = F.cross_entropy(
                logits.reshape(-1, a.vocab), tgt_out.reshape(-1), ignore_index=PAD
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.item()

        train_step()
        dt = timed(train_step, a.steps, sync)
        print(
            json.dumps(
                {
                    "mode": "train",
                    "step_ms": dt * 1e3,
                    "tokens_per_s": a.batch * a.tgt_len / dt,
                    **common,
                }
            ),
            flush=True,
        )
    model.eval()
    if a.mode in ("greedy", "all"):
        dt = timed(lambda: peer.greedy(model, src, src_mask, a.tgt_len), a.steps, sync)
        print(
            json.dumps(
                {"mode": "greedy", "batch_ms": dt * 1e3, "sentences_per_s": a.batch / dt, **common}
            ),
            flush=True,
        )
    if a.mode in ("beam", "all"):
        dt = timed(
            lambda: peer.beam_search(model, src, src_mask, a.tgt_len, a.beam),
            max(1, a.steps // 2),
            sync,
        )
        print(
            json.dumps(
                {
                    "mode": "beam",
                    "beam": a.beam,
                    "batch_ms": dt * 1e3,
                    "sentences_per_s": a.batch / dt,
                    **common,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
