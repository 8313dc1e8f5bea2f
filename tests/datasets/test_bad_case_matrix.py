"""Every bad case of the datasets issue on every layout it can occur in (BUS-BRA, UDIAT Dataset B,
BUSI, each built here by ``dataset_builders.build_layout``): ``inspect`` reports exactly that
problem, naming the file; ``import_dataset`` raises it; ``sonoaudit datasets import`` exits 1 with
it; and the store holds no dataset, no image row and no file afterwards.

Where the cases differ by layout:
  - unknown class label: BUS-BRA's label is the ``Pathology`` column of ``bus_data.csv`` and
    UDIAT's the ``Type`` column of ``DatasetB.xlsx`` (the problem names that file and its
    line/row); BUSI's label is the folder name, so an unknown label is an unknown class folder
    (the problem names the folder).
  - a class with no images: for BUS-BRA and UDIAT, no row of the labels file has the class (the
    labels file is blamed); for BUSI, the class folder is empty (the folder is blamed) or missing.
    "Class folder missing" cannot occur for BUS-BRA or UDIAT: they have no folder per class.
  - a stray file in the mask folder: BUSI keeps images and masks in the same class folder, so
    for BUSI it is the same case as a stray file next to the images.
  - missing mask: for BUSI ``normal`` images it is not a problem (normal = empty mask), so the
    case removes a benign mask on every layout.
Every other case occurs the same way in all three layouts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from dataset_builders import LAYOUT_FORMATS, SIDE, Layout, box_mask, build_layout, save_mask
from PIL import Image as PILImage
from sonoaudit.cli.main import app
from sonoaudit.context import AppContext, build_context
from sonoaudit.datasets import DatasetError, import_dataset, scan
from sonoaudit.db.migrate import upgrade
from sonoaudit.db.models import Dataset, Image
from sonoaudit.settings import Settings
from sqlalchemy import func, select
from typer.testing import CliRunner


@dataclass(frozen=True)
class Expect:
    path: Path
    problem: str
    prefix: bool = False  # ``problem`` is the start of the message (the rest is Pillow's text)

    def matches(self, path: str, problem: str) -> bool:
        text_ok = problem.startswith(self.problem) if self.prefix else problem == self.problem
        return path == str(self.path) and text_ok


def missing_mask(lay: Layout) -> Expect:
    lay.masks["benign 0"].unlink()
    return Expect(lay.masks["benign 0"], f"missing mask for image {lay.images['benign 0'].name}")


def extra_mask(lay: Layout) -> Expect:
    save_mask(lay.orphan_mask, box_mask(SIDE, SIDE), mode="L")
    if lay.fmt == "busi":
        return Expect(lay.orphan_mask, "extra mask: no image benign (99).png in benign/")
    return Expect(lay.orphan_mask, "extra mask: no listed image has this mask")


def size_mismatch(lay: Layout) -> Expect:
    mask = lay.masks["malignant 1"]
    save_mask(mask, box_mask(SIDE - 1, SIDE), mode="L")
    return Expect(mask, f"mask is {SIDE}x{SIDE - 1} but its image "
                        f"{lay.images['malignant 1'].name} is {SIDE}x{SIDE}")


def non_image_file(lay: Layout) -> Expect:
    lay.images["benign 1"].write_text("this is not a PNG")
    return Expect(lay.images["benign 1"], "not an image file (cannot identify an image format)")


def truncated_image(lay: Layout) -> Expect:
    path = lay.images["malignant 0"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return Expect(path, "unreadable image (", prefix=True)


def unreadable_mask(lay: Layout) -> Expect:
    lay.masks["malignant 0"].write_text("this is not a PNG")
    return Expect(lay.masks["malignant 0"],
                  "mask: not an image file (cannot identify an image format)")


def stray_file_with_images(lay: Layout) -> Expect:
    stray = lay.image_dir / "notes.txt"
    stray.write_text("hello")
    return Expect(stray, {
        "busbra": "unexpected file in Images/ (expected bus_*.png)",
        "udiat": "unexpected file in original/ (expected NNNNNN.png)",
        "busi": "unexpected file in benign/ (expected .png)",
    }[lay.fmt])


def stray_file_with_masks(lay: Layout) -> Expect:
    stray = lay.orphan_mask.parent / "notes.txt"
    stray.write_text("hello")
    return Expect(stray, {
        "busbra": "unexpected file in Masks/ (expected mask_*.png)",
        "udiat": "unexpected file in GT/ (expected NNNNNN.png)",
        "busi": "unexpected file in benign/ (expected .png)",  # same folder as the images
    }[lay.fmt])


def non_binary_mask(lay: Layout) -> Expect:
    soft = np.zeros((SIDE, SIDE), dtype=np.uint8)
    soft[8:18, 8:18] = 128  # 100 of 1024 pixels grey: 9.8 %, tolerance 1 %
    PILImage.fromarray(soft).save(lay.masks["benign 1"])
    return Expect(lay.masks["benign 1"], (
        "mask is not binary: 9.8% of pixels are neither black nor white (tolerance 1%); "
        "re-export it as a black/white PNG"))


def unknown_class_label(lay: Layout) -> Expect:
    where = lay.relabel("malignant 0", "borderline")
    return Expect(where, {
        "busbra": "line 4 (bus_0003-s): unknown class label 'borderline' in column Pathology; "
                  "expected one of benign, malignant",
        "udiat": "row 4 (image 000003): unknown class label 'borderline' in column Type; "
                 "expected Benign or Malignant",
        "busi": "unknown class folder borderline/; expected benign, malignant, normal",
    }[lay.fmt])


def class_with_no_images(lay: Layout) -> Expect:
    return Expect(lay.empty_class("malignant"), "class 'malignant' has no images")


def duplicate_across_classes(lay: Layout) -> Expect:
    first, copy = lay.images["benign 0"], lay.images["malignant 1"]
    copy.write_bytes(first.read_bytes())
    return Expect(copy, f"duplicate image across classes: identical file to {first} (benign) "
                        "but labelled malignant")


def class_folder_missing(lay: Layout) -> Expect:
    shutil.rmtree(lay.root / "malignant")
    return Expect(lay.root / "malignant", "BUSI layout: class folder malignant/ is missing")


CASES: dict[str, Callable[[Layout], Expect]] = {
    f.__name__: f for f in (
        missing_mask, extra_mask, size_mismatch, non_image_file, truncated_image,
        unreadable_mask, stray_file_with_images, stray_file_with_masks, non_binary_mask,
        unknown_class_label, class_with_no_images, duplicate_across_classes)
}
BUSI_ONLY = {"class_folder_missing": class_folder_missing}  # see the module doc
MATRIX = [(fmt, case) for fmt in LAYOUT_FORMATS for case in CASES] + [
    ("busi", case) for case in BUSI_ONLY]


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied per test (migrating each test's database is slow)."""
    path = tmp_path_factory.mktemp("db") / "sonoaudit.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def home(tmp_path: Path, migrated_db: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(migrated_db, home / "sonoaudit.db")
    return home


def settings_for(home: Path) -> Settings:
    return Settings(home=home, database_url="", store_dir=home / "store")


def cli_env(home: Path) -> dict[str, str]:
    return {"SONOAUDIT_HOME": str(home), "SONOAUDIT_DATABASE_URL": "",
            "SONOAUDIT_STORE_DIR": str(home / "store")}


@pytest.fixture
def ctx(home: Path) -> Iterator[AppContext]:
    c = build_context(settings_for(home))
    yield c
    c.close()


def count(ctx: AppContext, model: type) -> int:
    with ctx.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def stored_files(ctx: AppContext) -> list[Path]:
    return [p for p in ctx.store.root.rglob("*") if p.is_file()]


@pytest.mark.parametrize("fmt", LAYOUT_FORMATS)
def test_clean_layouts_import(fmt: str, tmp_path: Path, ctx: AppContext) -> None:
    """The baseline every case starts from is clean and imports (so each bad case below is the
    only reason its import fails)."""
    lay = build_layout(fmt, tmp_path / fmt)
    result = scan(lay.root)
    assert (result.format, result.problems) == (fmt, [])
    expected = {"benign": 2, "malignant": 2} | ({"normal": 1} if fmt == "busi" else {})
    assert result.counts == expected
    ds = import_dataset(ctx, lay.root)
    assert count(ctx, Image) == sum(expected.values()) and ds.counts == expected


@pytest.mark.parametrize(("fmt", "case"), MATRIX)
def test_bad_case_is_reported_and_nothing_is_imported(
        fmt: str, case: str, tmp_path: Path, home: Path, ctx: AppContext) -> None:
    lay = build_layout(fmt, tmp_path / fmt)
    expect = {**CASES, **BUSI_ONLY}[case](lay)
    runner = CliRunner()

    inspected = runner.invoke(app, ["datasets", "inspect", str(lay.root), "--json"])
    assert inspected.exit_code == 1, inspected.output
    summary = json.loads(inspected.stdout)
    assert summary["format"] == fmt
    problems = [(p["path"], p["problem"]) for p in summary["problems"]]
    assert len(problems) == 1 and expect.matches(*problems[0]), (expect, problems)

    with pytest.raises(DatasetError) as err:
        import_dataset(ctx, lay.root)
    assert [(p.path, p.problem) for p in err.value.problems] == problems
    assert f"{expect.path}: {expect.problem}" in str(err.value)

    imported = runner.invoke(app, ["datasets", "import", str(lay.root), "--json"],
                             env=cli_env(home))
    assert imported.exit_code == 1, imported.output
    assert json.loads(imported.stdout) == {"imported": False, "problems": summary["problems"]}
    human = runner.invoke(app, ["datasets", "import", str(lay.root)], env=cli_env(home))
    assert human.exit_code == 1
    assert "nothing imported" in human.output
    assert f"{expect.path}: {expect.problem}" in human.output

    assert count(ctx, Dataset) == 0 and count(ctx, Image) == 0
    assert stored_files(ctx) == []


@pytest.mark.integration
@pytest.mark.parametrize("fmt", LAYOUT_FORMATS)
def test_postgres_bad_case_writes_nothing(fmt: str, postgres_url: str, tmp_path: Path) -> None:
    """The same guarantee on the real Postgres (one case per layout: the cross-class duplicate,
    BUSI's known defect). The session database is shared, so compare before/after."""
    upgrade(postgres_url)
    ctx = build_context(Settings(home=tmp_path / "home", database_url=postgres_url,
                                 store_dir=tmp_path / "home" / "store"))
    try:
        before = (count(ctx, Dataset), count(ctx, Image))
        lay = build_layout(fmt, tmp_path / fmt)
        expect = duplicate_across_classes(lay)
        with pytest.raises(DatasetError) as err:
            import_dataset(ctx, lay.root)
        assert [expect.matches(p.path, p.problem) for p in err.value.problems] == [True]
        assert (count(ctx, Dataset), count(ctx, Image)) == before
        assert stored_files(ctx) == []
    finally:
        ctx.close()
