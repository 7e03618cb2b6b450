"""Segmentation stage: the measuring instrument. A 2D MONAI U-Net trained per arm, evaluated in 3D.

- `config`    SegmentationConfig (network, optimisation in steps, augmentation, synthetic mixing, runtime)
- `datasets`  make_train_stream: the one place where arms (real, real+synthetic, synthetic) differ
- `augmentation` the `strong` (nnU-Net-grade) training augmentation, with where each value comes from
- `train`     train_segmenter / train_steps / evaluate: resumable, deterministic, best.pt + last.pt
- `evaluate`  predict_case on the original voxel grid, Dice/HD95/volumes, EF and mass, summarize
- `model`     network, loss, optimiser, schedule and self-describing checkpoints
- `runtime`   device, threads, determinism, mixed precision, torch.compile, and the one distributed helper
              (torchrun/DDP context and collectives) that the generator trainer uses too
- `statistics` paired comparisons with `real` over patients and seeds, per test set
- `cli`       `cmr-synth segment --checkpoint --input --output`
"""
