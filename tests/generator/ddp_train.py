"""Run by ``torchrun`` in test_ddp.py: train the tiny profile on toy lesions with DDP (gloo, CPU).

    torchrun --standalone --nproc_per_node=2 ddp_train.py OUT_DIR BATCH_PER_RANK STEPS
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_helpers import tiny_profile, toy_lesions  # noqa: E402
from sonoaudit_generator.training import train_loop  # noqa: E402


def main() -> None:
    out, batch, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        data = toy_lesions()
        train_loop(data, data[:2], tiny_profile(batch, steps), out, seed=5, class_label="benign",
                   progress=False, device="cpu")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
