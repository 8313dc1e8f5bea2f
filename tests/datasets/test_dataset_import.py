"""import_dataset into SQLite and the real Postgres: one transaction, nothing written on a bad
dataset, idempotent re-import, patient-level split, phantom flag kept, bytes in the file store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from dataset_builders import make_busi, small_busbra
from sonoaudit.context import AppContext, build_context
from sonoaudit.datasets import (
    DatasetError,
    import_dataset,
    load_pair,
    load_stored_pair,
    load_stored_preprocessed,
    preprocess,
    scan,
    write_phantom,
)
from sonoaudit.db.models import Dataset, Image
from sonoaudit.settings import Settings
from sqlalchemy import func, select


def make_ctx(url: str, home: Path) -> AppContext:
    return build_context(Settings(home=home, database_url=url, store_dir=home / "store"))


@pytest.fixture
def ctx(sqlite_url: str, tmp_path: Path) -> Iterator[AppContext]:
    c = make_ctx(sqlite_url, tmp_path / "home")
    yield c
    c.close()


def rows_of(ctx: AppContext, dataset_id: str) -> list[Image]:
    with ctx.sessions() as s:
        return list(s.scalars(select(Image).where(Image.dataset_id == dataset_id)).all())


def count(ctx: AppContext, model: type) -> int:
    with ctx.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def check_phantom_import(ctx: AppContext, root: Path, n_per_class: int) -> Dataset:
    ds = import_dataset(ctx, root, val_fraction=0.25, seed=3)
    assert ds.is_phantom is True and "phantom" in ds.name
    assert ds.format == "busbra"
    assert ds.counts == {"benign": n_per_class, "malignant": n_per_class}
    assert ds.classes == ["benign", "malignant"]
    assert ds.provenance["split"]["seed"] == 3 and ds.provenance["is_phantom"] is True
    rows = rows_of(ctx, ds.id)
    assert len(rows) == 2 * n_per_class
    by_case: dict[str, set[str | None]] = {}
    for row in rows:
        by_case.setdefault(str(row.case_id), set()).add(row.split)
        assert row.source == "real"
    assert all(len(s) == 1 for s in by_case.values())  # no patient on both sides
    assert ds.n_cases == len(by_case)
    records = {r.name: r for r in scan(root).records}
    for row in rows:
        data = ctx.store.get(row.path)
        assert hashlib.sha256(data).hexdigest() == row.sha256
        # 8-bit grey PNGs are stored byte-identical to the original file.
        assert row.sha256 == hashlib.sha256(records[row.name].image_path.read_bytes()).hexdigest()
        image, mask = load_stored_pair(ctx.store, row)
        ref_image, ref_mask = load_pair(records[row.name])
        assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
        assert (row.width, row.height) == (ref_image.shape[1], ref_image.shape[0])
        assert row.meta["original_path"] == str(records[row.name].image_path)
    return ds


def test_phantom_import_sqlite(ctx: AppContext, tmp_path: Path) -> None:
    root = write_phantom(tmp_path / "ph", n_per_class=6, seed=11, size=64)
    check_phantom_import(ctx, root, 6)


def test_reimport_is_idempotent(ctx: AppContext, tmp_path: Path) -> None:
    root = write_phantom(tmp_path / "ph", n_per_class=4, seed=12, size=64)
    first = import_dataset(ctx, root, val_fraction=0.25, seed=3)
    again = import_dataset(ctx, root, val_fraction=0.25, seed=3)
    assert again.id == first.id
    assert count(ctx, Dataset) == 1 and count(ctx, Image) == 8
    with pytest.raises(ValueError, match="already imported"):
        import_dataset(ctx, root, val_fraction=0.25, seed=4)  # a different split is refused


def test_changed_label_is_a_new_dataset(ctx: AppContext, tmp_path: Path) -> None:
    root = small_busbra(tmp_path / "bb")
    first = import_dataset(ctx, root)
    csv = root / "bus_data.csv"
    csv.write_text(csv.read_text().replace("bus_0002-s,2,x,benign", "bus_0002-s,2,x,malignant"))
    second = import_dataset(ctx, root)
    assert second.id != first.id and second.fingerprint != first.fingerprint


def test_bad_dataset_writes_nothing(ctx: AppContext, tmp_path: Path) -> None:
    root = small_busbra(tmp_path / "bb")
    (root / "Masks" / "mask_0004-s.png").unlink()
    (root / "Images" / "bus_0001-s.png").write_text("broken")
    with pytest.raises(DatasetError) as err:
        import_dataset(ctx, root)
    assert {Path(p.path).name for p in err.value.problems} == {"mask_0004-s.png", "bus_0001-s.png"}
    assert count(ctx, Dataset) == 0 and count(ctx, Image) == 0
    assert not any(p.is_file() for p in ctx.store.root.rglob("*"))


def test_preprocessed_copies(ctx: AppContext, tmp_path: Path) -> None:
    root = small_busbra(tmp_path / "bb")
    ds = import_dataset(ctx, root, size=32)
    assert ds.provenance["preprocess"]["sizes"] == [32]
    records = {r.name: r for r in scan(root).records}
    for row in rows_of(ctx, ds.id):
        assert set(row.meta["preprocessed"]) == {"32"}
        img, msk = load_stored_preprocessed(ctx.store, row, 32)
        ref = preprocess(*load_pair(records[row.name]), 32)
        assert np.array_equal(img, ref[0]) and np.array_equal(msk, ref[1])
    again = import_dataset(ctx, root, size=48)  # adds the new size to the same dataset
    assert again.id == ds.id and again.provenance["preprocess"]["sizes"] == [32, 48]
    assert all(set(r.meta["preprocessed"]) == {"32", "48"} for r in rows_of(ctx, ds.id))
    assert count(ctx, Image) == 6


def test_busi_import_converts_rgb_and_merges_masks(ctx: AppContext, tmp_path: Path) -> None:
    root = make_busi(tmp_path / "busi")
    ds = import_dataset(ctx, root, val_fraction=0.0)
    assert ds.format == "busi" and ds.classes == ["benign", "malignant", "normal"]
    rows = {r.name: r for r in rows_of(ctx, ds.id)}
    records = {r.name: r for r in scan(root).records}
    rgb = rows["malignant (1)"]
    assert rgb.meta["grey_conversion"] == "luma601"
    assert rgb.sha256 != rgb.meta["original_sha256"]  # stored as converted grey PNG
    for name in ("malignant (1)", "benign (1)", "normal (1)"):
        image, mask = load_stored_pair(ctx.store, rows[name])
        ref_image, ref_mask = load_pair(records[name])
        assert np.array_equal(image, ref_image) and np.array_equal(mask, ref_mask)
    assert rows["benign (1)"].meta["lesion_pixels"] == 36 + 35
    assert rows["normal (1)"].meta["lesion_pixels"] == 0


def test_real_sample_import(ctx: AppContext, busbra_sample: Path) -> None:
    ds = import_dataset(ctx, busbra_sample)
    assert ds.is_phantom is False and ds.counts == {"benign": 40, "malignant": 40}
    assert ds.n_cases == 80
    # 40 cases per class, 20 % of cases → 8 per class in val.
    assert ds.provenance["split"]["counts"] == {
        "train": {"benign": 32, "malignant": 32}, "val": {"benign": 8, "malignant": 8}}
    row = rows_of(ctx, ds.id)[0]
    assert row.meta["birads"] and row.meta["device"]


@pytest.mark.integration
def test_postgres_import(postgres_url: str, tmp_path: Path) -> None:
    from sonoaudit.db.migrate import upgrade

    upgrade(postgres_url)
    ctx = make_ctx(postgres_url, tmp_path / "home")
    try:
        root = write_phantom(tmp_path / "ph", n_per_class=5, seed=9137, size=64)
        ds = check_phantom_import(ctx, root, 5)
        again = import_dataset(ctx, root, val_fraction=0.25, seed=3, size=32)
        assert again.id == ds.id and again.provenance["preprocess"]["sizes"] == [32]
        rows = rows_of(ctx, ds.id)
        assert len(rows) == 10 and all("32" in r.meta["preprocessed"] for r in rows)

        before = (count(ctx, Dataset), count(ctx, Image))
        bad = small_busbra(tmp_path / "bad")
        (bad / "Masks" / "mask_0001-s.png").unlink()
        with pytest.raises(DatasetError):
            import_dataset(ctx, bad)
        assert (count(ctx, Dataset), count(ctx, Image)) == before
        with ctx.sessions() as s:
            stored = s.get_one(Dataset, ds.id)
            assert stored.is_phantom is True
    finally:
        ctx.close()
