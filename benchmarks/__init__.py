"""Benchmark scripts (run from the repository root; each prints a table and writes JSON with --out).

    python -m benchmarks.throughput    # pipeline U-Net / SPADE training steps vs a bare loop on the same model
    python -m benchmarks.loading       # slices/s the training loader delivers vs what a training step consumes
    python -m benchmarks.augmentation  # ms per sample of the training augmentation: none, standard, strong
    python -m benchmarks.ddp_scaling   # samples/s with 1 vs 2 torchrun processes (Gloo on CPU, NCCL on GPUs)
    python -m benchmarks.memory        # peak RSS (and CUDA max_memory_allocated) per training/inference stage

They are measurements, not tests: run them on an idle machine. All take --device (auto|cpu|cuda) and size
options (--size, --batch, --steps) so the same commands run on a CPU and on a GPU.
"""
