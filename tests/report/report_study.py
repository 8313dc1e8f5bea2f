"""A complete study built directly in the test database: real BUS-BRA sample images, stand-in
"synthetic" images (also BUS-BRA files, flagged synthetic with a generation run), four simulated
readers answering class/confidence/llm_match, two LLM replicates with abstentions, and a metric
run with memorisation pairs."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sonoaudit.context import AppContext
from sonoaudit.db.models import (
    Answer,
    Dataset,
    GenerationRun,
    Image,
    LLMClassification,
    MetricRun,
    Model,
    Reader,
    Study,
    StudyItem,
)
from sonoaudit.db.session import session_scope
from sonoaudit_raters.study.config import StudyConfig
from sonoaudit_raters.study.tokens import hash_token

ADMIN_TOKEN = "admin-secret-for-tests"
CLASSES = ["benign", "malignant", "normal"]


@dataclass
class BuiltStudy:
    study_id: str
    n_items: int
    readers: list[str]


def build_study(ctx: AppContext, busbra: Path, per_group: int = 6, seed: int = 0) -> BuiltStudy:
    rng = np.random.default_rng(seed)
    with (busbra / "bus_data.csv").open() as fh:
        meta = list(csv.DictReader(fh))
    by_class = {c: [m for m in meta if m["Pathology"] == c] for c in ("benign", "malignant")}
    with session_scope(ctx.sessions) as s:
        ds = Dataset(name="BUS-BRA sample", format="busbra", root_path=str(busbra),
                     is_phantom=False, classes=["benign", "malignant"],
                     fingerprint=f"test-{rng.integers(1 << 60)}")
        model = Model(name="test model", backbone="rsu", checkpoint_path="/nonexistent")
        s.add_all([ds, model])
        s.flush()
        gen = GenerationRun(model_id=model.id, n=2 * per_group, sampler="ddim", steps=10, seed=1)
        s.add(gen)
        s.flush()
        images: list[Image] = []
        for cls, rows in by_class.items():
            for k, m in enumerate(rows[: 2 * per_group]):
                synthetic = k >= per_group
                img_sha, img_rel = ctx.store.put((busbra / "Images" / f"{m['ID']}.png")
                                                 .read_bytes())
                mask_sha, mask_rel = ctx.store.put(
                    (busbra / "Masks" / f"mask_{m['ID'][4:]}.png").read_bytes())
                images.append(Image(
                    sha256=img_sha, mask_sha256=mask_sha, path=img_rel, mask_path=mask_rel,
                    source="synthetic" if synthetic else "real", class_label=cls,
                    name=m["ID"], width=int(m["Width"]), height=int(m["Height"]),
                    dataset_id=None if synthetic else ds.id,
                    generation_run_id=gen.id if synthetic else None,
                    sample_index=len(images) if synthetic else None))
        s.add_all(images)
        s.flush()
        study = Study(name="report test study", config=StudyConfig().model_dump(mode="json"),
                      admin_token_hash=hash_token(ADMIN_TOKEN), seed=seed, simulated=True)
        s.add(study)
        s.flush()
        items = [StudyItem(study_id=study.id, item_key=f"k{n:03d}", position=n, image_id=im.id,
                           source=im.source, ground_truth=im.class_label,
                           dataset=None if im.source == "synthetic" else ds.name)
                 for n, im in enumerate(images)]
        s.add_all(items)
        s.flush()
        # Four items shown twice, for intra-reader agreement.
        repeats = [StudyItem(study_id=study.id, item_key=f"rep{n}", position=len(items) + n,
                             image_id=it.image_id, repeat_of=it.id, source=it.source,
                             ground_truth=it.ground_truth, dataset=it.dataset)
                   for n, it in enumerate(items[::6])]
        s.add_all(repeats)
        s.flush()
        readers = [Reader(study_id=study.id, name=f"reader {j + 1}", token_hash=f"t{j}-{study.id}",
                          simulated=True) for j in range(4)]
        s.add_all(readers)
        s.flush()
        # Readers are right 85 % of the time on real items, 65 % on synthetic ones.
        ev = 0
        for it in items + repeats:
            for rd in readers:
                if rng.random() < 0.1 and it.repeat_of is None:
                    continue  # not read yet
                p = 0.85 if it.source == "real" else 0.65
                label = it.ground_truth if rng.random() < p else str(rng.choice(CLASSES))
                conf = str(int(rng.choice([40, 60, 80, 100] if it.source == "real"
                                          else [20, 40, 60, 80])))
                for q, v in (("class", label), ("confidence", conf),
                             ("llm_match", str(rng.choice(["agree", "partly", "disagree"])))):
                    ev += 1
                    s.add(Answer(study_id=study.id, item_id=it.id, reader_id=rd.id, question=q,
                                 value=v, client_event_id=f"e{ev}",
                                 meta={"llm_label": it.ground_truth} if q == "llm_match" else {}))
        for im in images:
            for rep in range(2):
                ok = rng.random() > 0.1
                label = im.class_label if rng.random() < 0.7 else str(rng.choice(CLASSES))
                s.add(LLMClassification(
                    image_id=im.id, image_sha256=im.sha256, backend="fake", model="fake-model",
                    prompt_version="v1", prompt_hash="0" * 64, condition="image",
                    replicate=rep, status="ok" if ok else "abstain",
                    label=label if ok else None, confidence=0.8 if ok else None))
        real = [i for i in images if i.source == "real"]
        synth = [i for i in images if i.source == "synthetic"]
        s.add(MetricRun(
            real_ref=ds.id, synthetic_ref=gen.id, status="done",
            results={"schema": "sonoaudit.metrics/1", "n_real": len(real),
                     "n_synthetic": len(synth), "class_label": None,
                     "fid": {"value": 63.2, "n_real": len(real), "n_synthetic": len(synth)},
                     "kid": {"mean": 0.0123, "std": 0.0011},
                     "is": {"value": None, "reason": "Inception logits weights not supplied"},
                     "memorisation": {"n_flagged": 1, "top_pairs": [
                         {"synthetic_id": synth[0].id, "real_id": real[0].id, "ssim": 0.93,
                          "flagged": True},
                         {"synthetic_id": synth[1].id, "real_id": real[1].id, "ssim": 0.41,
                          "flagged": False}]},
                     "per_class": {"benign": {"n_real": 6, "n_synthetic": 6,
                                              "fid": {"value": 80.1},
                                              "kid": {"mean": 0.02, "std": 0.002}}},
                     "provenance": {"extractor": "fid-inception-2015-12-05-pool3"}},
            provenance={"seed": 0}))
        return BuiltStudy(study.id, len(items), [r.name for r in readers])


def build_empty_phantom_study(ctx: AppContext, busbra: Path) -> str:
    """A study nobody has read yet, on a phantom dataset, with no LLM answers or metric runs."""
    with (busbra / "bus_data.csv").open() as fh:
        m = list(csv.DictReader(fh))[-1]  # an image the full study does not use
    with session_scope(ctx.sessions) as s:
        ds = Dataset(name="phantom", format="busbra", root_path="/phantom", is_phantom=True,
                     fingerprint="phantom-test")
        s.add(ds)
        s.flush()
        sha, rel = ctx.store.put((busbra / "Images" / f"{m['ID']}.png").read_bytes())
        img = Image(sha256=sha, path=rel, source="real", class_label="benign", name="ph0",
                    width=10, height=10, dataset_id=ds.id)
        s.add(img)
        s.flush()
        study = Study(name="empty", config=StudyConfig().model_dump(mode="json"),
                      admin_token_hash=hash_token("x"), seed=0)
        s.add(study)
        s.flush()
        s.add(StudyItem(study_id=study.id, item_key="only", image_id=img.id, source="real",
                        ground_truth="benign", dataset="phantom"))
        return study.id
