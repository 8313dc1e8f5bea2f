"""Run by ``torchrun`` in test_store_training.py: ``train_model`` (the CLI's path) under DDP
(gloo, CPU), recording per rank what it imported and which dataset/run it trained for.

    torchrun --standalone --nproc_per_node=2 ddp_store_train.py HOME DB_URL DATA OUT RECORD_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sonoaudit.datasets  # noqa: E402
from sonoaudit.context import build_context  # noqa: E402
from sonoaudit.settings import Settings  # noqa: E402
from sonoaudit_generator import store_training  # noqa: E402
from sonoaudit_generator.checkpoint import CheckpointError  # noqa: E402


def main() -> None:
    home, db_url, data, out, record = sys.argv[1:6]
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    seen: dict[str, Any] = {"rank": rank, "imports": 0, "train_loop": []}
    real_import, real_loop = sonoaudit.datasets.import_dataset, store_training.train_loop

    def counting_import(*a: Any, **kw: Any) -> Any:
        seen["imports"] += 1
        return real_import(*a, **kw)

    def recording_loop(*a: Any, **kw: Any) -> Any:
        seen["train_loop"].append({"meta": kw["meta"],
                                   "on_checkpoint": kw["on_checkpoint"] is not None})
        return real_loop(*a, **kw)

    sonoaudit.datasets.import_dataset = counting_import  # type: ignore[assignment]
    store_training.train_loop = recording_loop  # type: ignore[assignment]
    ctx = build_context(Settings(home=Path(home), database_url=db_url))
    try:
        # rank 0 refuses the resume (no checkpoint there): every rank must get the error
        try:
            store_training.train_model(ctx, data, "benign", "tiny", Path(out) / "none", seed=0,
                                       steps=2, resume=True, progress=False)
        except CheckpointError as exc:
            seen["refused"] = str(exc)
        model = store_training.train_model(ctx, data, "benign", "tiny", Path(out), seed=0,
                                           steps=2, progress=False)
        seen["model_id"] = None if model is None else model.id
    finally:
        ctx.close()
        dist.destroy_process_group()
    Path(record, f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
