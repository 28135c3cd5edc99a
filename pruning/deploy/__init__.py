"""A finished model on the CPU: ONNX export, quantization and the ONNX Runtime and OpenVINO sessions (`runtimes`),
a variant directory as a deployable artifact (`artifact`), vocabulary trimming (`vocab`), importance-driven 8/4-bit
precision (`precision`), energy counters (`energy`) and the measured inference cost of a candidate structure
(`inference_cost`).

May import: `pruning.core`, `pruning.data`, `pruning.run` (results.json's schema, model cards); never studies or
grid. `runtimes.py` also runs as a bare script (`python pruning/deploy/runtimes.py VARIANT DEV THREADS BATCH`) in
a fresh process that must not pay for torch: it imports no module of `pruning` at its top.
"""
