"""Speed and memory benchmarks of seq2seq_jax against its PyTorch peer and the machine's limit.

Run them all with `python -m benchmarks.run [--quick]` (one JSON line per figure); see
benchmarks/RESULTS.md for the measured figures and docs/ARCHITECTURE.md ("Benchmarks").
"""
