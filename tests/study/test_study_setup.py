"""Study set-up, per-reader order, answer rules, LLM reveal, export/import and the simulated
panel, on the in-process API (SQLite)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from sonoaudit.db.models import Answer, Assignment, Image, Reader, Study
from sonoaudit_raters.study import (
    AccessDenied,
    EmptyStudy,
    ImportProblems,
    InvalidAnswer,
    Locked,
    NotAssigned,
    StudyError,
    add_reader,
    create_study,
    export_answers,
    import_answers,
    reader_link,
    reveal_llm,
    revoke_reader,
    rows_to_csv,
    select_images,
    simulate_panel,
    submit,
)
from sonoaudit_raters.study.ordering import reader_order
from sonoaudit_raters.study.reading import view_for_token
from sqlalchemy import func, select


def _answers(store: Any, reader_id: str) -> list[Answer]:
    with store.ctx.sessions() as s:
        return list(s.scalars(select(Answer).where(Answer.reader_id == reader_id)))


def test_empty_image_set_is_a_clear_error(store: Any) -> None:
    with pytest.raises(EmptyStudy, match="has no images"):
        create_study(store.ctx, "empty", [], [])


def test_source_mismatch_and_unknown_ids_rejected(store: Any) -> None:
    synth = store.synthetic_ids(1)
    with pytest.raises(StudyError, match="source mismatch"):
        create_study(store.ctx, "x", synth, [])
    with pytest.raises(StudyError, match="not in the store"):
        create_study(store.ctx, "x", ["nope"], [])


def test_select_images_per_class(store: Any) -> None:
    real, synth = select_images(store.ctx, dataset_id=store.dataset_id,
                                generation_run_ids=list(store.runs.values()),
                                per_class={"benign": 3, "malignant": 2}, seed=1)
    with store.ctx.sessions() as s:
        imgs = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(real + synth)))}
    assert sorted(imgs[i].class_label for i in real) == ["benign"] * 3 + ["malignant"] * 2
    assert {imgs[i].source for i in real} == {"real"}
    assert sorted(imgs[i].class_label for i in synth) == ["benign"] * 3 + ["malignant"] * 2
    assert {imgs[i].source for i in synth} == {"synthetic"}
    again = select_images(store.ctx, dataset_id=store.dataset_id,
                          generation_run_ids=list(store.runs.values()),
                          per_class={"benign": 3, "malignant": 2}, seed=1)
    assert again == (real, synth)
    with pytest.raises(StudyError, match="only 10 available"):
        select_images(store.ctx, generation_run_ids=list(store.runs.values()),
                      per_class={"benign": 11})


def test_reader_order_stable_per_reader_and_repeats_spaced() -> None:
    items = [f"i{k:02d}" for k in range(30)]
    repeats = {"r1": "i03", "r2": "i17"}
    a1 = reader_order(items + list(repeats), repeats, study_seed=7, study_id="s", reader_id="a")
    a2 = reader_order(items + list(repeats), repeats, study_seed=7, study_id="s", reader_id="a")
    b = reader_order(items + list(repeats), repeats, study_seed=7, study_id="s", reader_id="b")
    assert a1 == a2 and a1 != b
    assert sorted(a1) == sorted(items + list(repeats))
    for rep, orig in repeats.items():
        assert abs(a1.index(rep) - a1.index(orig)) >= 5


def test_study_items_hide_source_and_keep_ground_truth(store: Any) -> None:
    real, synth = store.real_ids(2), store.synthetic_ids(2)
    study, admin = create_study(store.ctx, "s", real, synth, n_repeats=2, seed=3)
    assert admin and len(admin) >= 32
    with store.ctx.sessions() as s:
        st = s.get_one(Study, study.id)
        assert st.admin_token_hash != admin  # stored hashed
        assert st.provenance["seed"] == 3 and "packages" in st.provenance
    tok = add_reader(store.ctx, study.id, "Dr A")
    view = view_for_token(store.ctx, tok)
    assert view.total == 8 + 2
    # opaque keys: never the image id or its sha
    with store.ctx.sessions() as s:
        shas = {i.sha256 for i in s.scalars(select(Image))}
        ids = {i.id for i in s.scalars(select(Image))}
    for item in view.items:
        assert item.item_key not in shas and item.item_key not in ids
        assert not hasattr(item, "source") and not hasattr(item, "ground_truth")
    assert reader_link("http://h:8004/", tok) == f"http://h:8004/study/r/{tok}"
    with pytest.raises(StudyError, match="already has a reader named"):
        add_reader(store.ctx, study.id, "Dr A")


def test_synthetic_items_carry_their_training_dataset(store: Any) -> None:
    """A synthetic image's dataset is the one its generator was trained on, so the report's
    by-dataset stratum holds real and synthetic images of that dataset."""
    from sonoaudit.db.models import Dataset, GenerationRun, Model, StudyItem, TrainingRun
    from sonoaudit.db.session import session_scope
    from sonoaudit_raters.report.analysis import analyse_study
    from sonoaudit_raters.report.study_data import load_study

    with session_scope(store.ctx.sessions) as s:
        ds_name = s.get_one(Dataset, store.dataset_id).name
        tr = TrainingRun(dataset_id=store.dataset_id, class_label="benign", profile="test")
        s.add(tr)
        s.flush()
        benign_run = s.get_one(GenerationRun, store.runs["benign"])
        trained = Model(name="trained-ddpm", backbone="unet", checkpoint_path="/nonexistent",
                        training_run_id=tr.id)
        s.add(trained)
        s.flush()
        benign_run.model_id = trained.id  # the malignant run's model has no training run
    real, synth = store.real_ids(2), store.synthetic_ids(2)  # 2 benign + 2 malignant each
    study, _ = create_study(store.ctx, "by dataset", real, synth, seed=0)
    with store.ctx.sessions() as s:
        got = {(i.source, i.ground_truth, i.dataset) for i in s.scalars(
            select(StudyItem).where(StudyItem.study_id == study.id))}
    assert got == {("real", "benign", ds_name), ("real", "malignant", ds_name),
                   ("synthetic", "benign", ds_name), ("synthetic", "malignant", None)}
    simulate_panel(store.ctx, study.id, n_readers=2, seed=1)
    out = analyse_study(load_study(store.ctx, study.id), n_boot=10)
    # 4 real + the 2 synthetic benign images from the model trained on the dataset
    assert out["class_agreement"]["n_items"][f"dataset={ds_name}"] == 6
    acc = out["reader_accuracy"]["strata"][f"dataset={ds_name}"]["majority_vote"]
    assert acc["n"] == 6
    stratum = [k for k in out["class_agreement"]["strata"] if k.startswith("dataset=")]
    assert stratum == [f"dataset={ds_name}"]


def test_answer_rules(store: Any, add_llm: Any) -> None:
    real = store.real_ids(2)
    study, _ = create_study(store.ctx, "rules", real, [], seed=0)
    add_llm(store.ctx, real[:1] + real[2:3])  # benign[0] and malignant[0] have an LLM answer
    tok = add_reader(store.ctx, study.id, "Dr B")
    other = add_reader(store.ctx, study.id, "Dr C")
    view = view_for_token(store.ctx, tok)
    llm_item = next(i for i in view.items if i.has_llm)
    plain = next(i for i in view.items if not i.has_llm)
    good = {"class": "malignant", "confidence": "80"}

    with pytest.raises(InvalidAnswer, match="confidence"):
        submit(store.ctx, tok, llm_item.item_key, "read", {"class": "benign", "confidence": "30"},
               client_event_id="evt-conf-30")
    with pytest.raises(InvalidAnswer, match="class"):
        submit(store.ctx, tok, llm_item.item_key, "read", {"class": "cyst", "confidence": "20"},
               client_event_id="evt-bad-class")
    with pytest.raises(InvalidAnswer, match="required"):
        submit(store.ctx, tok, llm_item.item_key, "read", {"class": "benign"},
               client_event_id="evt-missing")
    with pytest.raises(NotAssigned):
        submit(store.ctx, tok, "0000000000000000", "read", good, client_event_id="evt-unassign")
    # LLM hidden and its step refused until stage 1 is locked
    with pytest.raises(Locked):
        reveal_llm(store.ctx, tok, llm_item.item_key)
    with pytest.raises(Locked):
        submit(store.ctx, tok, llm_item.item_key, "llm", {"llm_match": "agree"},
               client_event_id="evt-early-llm")
    assert _answers(store, view.reader_id) == []

    r1 = submit(store.ctx, tok, llm_item.item_key, "read", good, client_event_id="evt-lock-1",
                time_on_item_ms=4200)
    r2 = submit(store.ctx, tok, llm_item.item_key, "read", good, client_event_id="evt-lock-1",
                time_on_item_ms=4300)
    assert (r1.recorded, r1.duplicate, r1.complete) == (2, False, False)
    assert (r2.recorded, r2.duplicate) == (0, True)
    assert len(_answers(store, view.reader_id)) == 2
    rev = reveal_llm(store.ctx, tok, llm_item.item_key)
    assert rev.label == "malignant" and rev.rationale and "LLM-RATIONALE" in rev.rationale
    # the other reader has not locked this item: still hidden for them
    with pytest.raises(Locked):
        reveal_llm(store.ctx, other, llm_item.item_key)
    with pytest.raises(Locked, match="locked"):
        submit(store.ctx, tok, llm_item.item_key, "read", {"class": "benign", "confidence": "80"},
               client_event_id="evt-change")
    with pytest.raises(InvalidAnswer, match="llm_match"):
        submit(store.ctx, tok, llm_item.item_key, "llm", {"llm_match": "maybe"},
               client_event_id="evt-llm-bad")
    done = submit(store.ctx, tok, llm_item.item_key, "llm",
                  {"llm_match": "agree", "flag": ["mask_wrong"], "comment": "edge blurred"},
                  client_event_id="evt-llm-ok")
    assert done.complete and done.recorded == 3
    # an edit of an optional answer is a new event, the old one stays
    submit(store.ctx, tok, llm_item.item_key, "llm", {"llm_match": "partly", "flag": []},
           client_event_id="evt-llm-edit")
    events = [(a.question, a.value, a.meta.get("edit")) for a in _answers(store, view.reader_id)]
    assert ("llm_match", "agree", False) in events and ("llm_match", "partly", True) in events
    assert ("flag", "", True) in events  # cleared flag recorded as an event
    # an item without an LLM answer is complete after one step; it has no LLM step
    r = submit(store.ctx, tok, plain.item_key, "read", good | {"comment": "ok"},
               client_event_id="evt-plain")
    assert r.complete
    with pytest.raises(InvalidAnswer, match="no LLM answer"):
        submit(store.ctx, tok, plain.item_key, "llm", {"llm_match": "agree"},
               client_event_id="evt-plain-llm")
    assert view_for_token(store.ctx, tok).done == 2
    # revoked token: denied, answers kept
    revoke_reader(store.ctx, study.id, view.reader_id)
    with pytest.raises(AccessDenied):
        view_for_token(store.ctx, tok)
    with pytest.raises(AccessDenied):
        submit(store.ctx, tok, plain.item_key, "read", good, client_event_id="evt-after-revoke")
    assert len(_answers(store, view.reader_id)) == 2 + 3 + 2 + 3


@pytest.mark.parametrize("backend", ["store", "pg_store"])
def test_distinct_event_ids_are_never_taken_for_a_retry(backend: str,
                                                       request: pytest.FixtureRequest) -> None:
    """Ids that a LIKE prefix pattern would confuse ("_" is a wildcard, SQLite's LIKE ignores
    case) are different events: each one's answers are recorded."""
    st = request.getfixturevalue(backend)
    # no LLM step: the session's Postgres store holds other tests' LLM answers for these images,
    # which would add an llm_match question to every item
    study, _ = create_study(st.ctx, f"event-ids-{backend}", st.real_ids(2), [], seed=0,
                            config={"llm": {"model": "no-llm-in-this-test"}})
    tok = add_reader(st.ctx, study.id, "Dr E")
    items = view_for_token(st.ctx, tok).items
    reader_id = view_for_token(st.ctx, tok).reader_id
    good = {"class": "benign", "confidence": "60"}
    ids = ["evtX0001", "evt_0001", "EVT-case-01", "evt-case-01"]
    results = [submit(st.ctx, tok, item.item_key, "read", good, client_event_id=cid)
               for item, cid in zip(items, ids, strict=True)]
    assert [(r.recorded, r.duplicate) for r in results] == [(2, False)] * 4
    with st.ctx.sessions() as s:
        stored = sorted(s.scalars(select(Answer.client_event_id)
                                  .where(Answer.reader_id == reader_id)))
    assert stored == sorted(f"{c}:{q}" for c in ids for q in ("class", "confidence"))
    # a real retry is still one event
    again = submit(st.ctx, tok, items[1].item_key, "read", good, client_event_id="evt_0001")
    assert (again.recorded, again.duplicate) == (0, True)
    assert view_for_token(st.ctx, tok).done == 4


def test_llm_filter_condition_is_a_classifier_condition(store: Any) -> None:
    from datetime import UTC, datetime

    from pydantic import ValidationError
    from sonoaudit.db.models import LLMClassification
    from sonoaudit.db.session import session_scope

    real = store.real_ids(1)
    with pytest.raises(ValidationError, match=r"llm\.condition") as err:
        create_study(store.ctx, "bad cond", real, [], config={"llm": {"condition": "image+mask"}})
    assert "side_by_side" in str(err.value)  # says what is expected
    study, _ = create_study(store.ctx, "cond", real, [],
                            config={"llm": {"condition": "side_by_side"}}, seed=0)
    tok = add_reader(store.ctx, study.id, "A")
    item = view_for_token(store.ctx, tok).items[0]
    with store.ctx.sessions() as s:
        img = s.get_one(Image, item.image_id)
    with session_scope(store.ctx.sessions) as s:  # the later row has another condition
        for k, cond in enumerate(["side_by_side", "image"]):
            s.add(LLMClassification(created_at=datetime(2026, 1, 1 + k, tzinfo=UTC),
                image_id=img.id, image_sha256=img.sha256, backend="b", model="m",
                prompt_version="v1", prompt_hash="0" * 64, condition=cond, replicate=0,
                status="ok", label="benign", rationale=f"cond {cond}"))
    submit(store.ctx, tok, item.item_key, "read", {"class": "benign", "confidence": "40"},
           client_event_id="cond-read")
    assert reveal_llm(store.ctx, tok, item.item_key).rationale == "cond side_by_side"


def test_export_hidden_columns_and_import_roundtrip(store: Any, add_llm: Any,
                                                     tmp_path: Path) -> None:
    real, synth = store.real_ids(2), store.synthetic_ids(2)
    study, _ = create_study(store.ctx, "exp", real, synth, seed=5)
    add_llm(store.ctx, synth[:2])
    ids = simulate_panel(store.ctx, study.id, n_readers=2, accuracy=1.0, seed=1)
    rows = export_answers(store.ctx, study.id)
    with store.ctx.sessions() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
        assert s.get_one(Study, study.id).simulated
        assert all(s.get_one(Reader, r).simulated for r in ids)
    # 8 items × 2 readers × (class, confidence) + 2 LLM items × 2 readers × llm_match
    assert len(rows) == 8 * 2 * 2 + 2 * 2
    for row in rows:
        img = images[row["image_id"]]
        assert row["source"] == img.source and row["ground_truth"] == img.class_label
        assert row["simulated"] is True and row["study_has_simulated_readers"] is True
        if row["question"] == "class":
            assert row["answer"] == img.class_label  # accuracy=1.0
        if row["question"] == "llm_match":
            assert row["llm_label"] == "malignant"
            assert row["answer"] in ("agree", "partly") if img.class_label == "malignant" \
                else row["answer"] in ("disagree", "partly")
    # import the same long CSV (readers renamed: ratings "from elsewhere") into a new study
    other, _ = create_study(store.ctx, "imp", real, synth, seed=5)
    keys_old = {r["item"]: r["image_id"] for r in rows}
    with store.ctx.sessions() as s:
        from sonoaudit.db.models import StudyItem

        key_by_image = {i.image_id: i.item_key for i in
                        s.scalars(select(StudyItem).where(StudyItem.study_id == other.id))}
    csv_rows = [r | {"study": other.id, "item": key_by_image[keys_old[r["item"]]],
                     "reader": "ext-" + r["reader"]}
                for r in rows if r["question"] != "llm_match"]
    path = tmp_path / "ratings.csv"
    path.write_text(rows_to_csv(csv_rows))
    rep = import_answers(store.ctx, other.id, path)
    assert (rep.rows, rep.recorded, rep.duplicates) == (32, 32, 0)
    assert len(rep.readers_created) == 2
    again = import_answers(store.ctx, other.id, path)
    assert (again.recorded, again.duplicates) == (0, 32)
    out = export_answers(store.ctx, other.id)
    assert sorted((r["reader"], r["image_id"], r["question"], r["answer"]) for r in out) == \
        sorted((r["reader"], r["image_id"], r["question"], r["answer"]) for r in csv_rows)
    assert all(r["imported"] for r in out)


def test_import_reports_every_bad_row_and_writes_nothing(store: Any, tmp_path: Path) -> None:
    study, _ = create_study(store.ctx, "bad", store.real_ids(1), [], seed=0)
    with store.ctx.sessions() as s:
        from sonoaudit.db.models import StudyItem

        item = s.scalars(select(StudyItem).where(StudyItem.study_id == study.id)).first()
        assert item is not None
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "reader", "question", "answer", "source"])
        w.writerow([item.item_key, "ext", "class", "benign", ""])  # fine
        w.writerow([item.item_key, "ext", "confidence", "30", ""])  # off scale
        w.writerow(["nope", "ext", "class", "benign", ""])  # unknown item
        w.writerow([item.item_key, "ext", "class", "benign", "synthetic"])  # wrong hidden value
    with pytest.raises(ImportProblems) as err:
        import_answers(store.ctx, study.id, path)
    text = str(err.value)
    assert "bad.csv:3" in text and "confidence" in text
    assert "bad.csv:4" in text and "bad.csv:5" in text and "bad.csv:2" not in text
    with store.ctx.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Answer)
                        .where(Answer.study_id == study.id)) == 0
        assert s.scalar(select(func.count()).select_from(Reader)
                        .where(Reader.study_id == study.id)) == 0


def test_assignments_materialised_at_enrolment(store: Any) -> None:
    study, _ = create_study(store.ctx, "asg", store.real_ids(3), [], n_repeats=1, seed=2)
    add_reader(store.ctx, study.id, "A")
    with store.ctx.sessions() as s:
        rows = s.execute(select(Assignment.position).where(Assignment.study_id == study.id)
                         .order_by(Assignment.position)).scalars().all()
    assert rows == list(range(7))


def test_custom_questions_and_llm_filter(store: Any, add_llm: Any) -> None:
    from datetime import UTC, datetime

    from sonoaudit.db.models import LLMClassification
    from sonoaudit.db.session import session_scope

    real = store.real_ids(1)
    cfg = {
        "questions": [
            {"key": "class", "kind": "choice", "stage": "read", "prompt": "Class?",
             "options": ["benign", "malignant"]},
            {"key": "quality", "kind": "scale", "stage": "read", "prompt": "Mask quality?",
             "min": 1, "max": 5, "step": 1},
            {"key": "llm_match", "kind": "choice", "stage": "llm", "prompt": "Match?",
             "options": ["agree", "disagree"]},
        ],
        "llm": {"model": "wanted-model"},
    }
    study, _ = create_study(store.ctx, "custom", real, [], config=cfg, seed=0)
    tok = add_reader(store.ctx, study.id, "A")
    item = view_for_token(store.ctx, tok).items[0]
    add_llm(store.ctx, [item.image_id])  # model "fake-llm": filtered out
    assert not view_for_token(store.ctx, tok).items[0].has_llm
    with store.ctx.sessions() as s:
        img = s.get_one(Image, item.image_id)
    with session_scope(store.ctx.sessions) as s:
        for k, label in enumerate(["benign", "malignant"]):  # the later row wins
            s.add(LLMClassification(created_at=datetime(2026, 1, 1 + k, tzinfo=UTC),
                image_sha256=img.sha256, backend="b", model="wanted-model",
                prompt_version="v1", prompt_hash="0" * 64, condition="c", replicate=k,
                status="ok", label=label, rationale=f"row {k}"))
    item = view_for_token(store.ctx, tok).items[0]
    assert item.has_llm
    with pytest.raises(InvalidAnswer, match="normal"):
        submit(store.ctx, tok, item.item_key, "read", {"class": "normal", "quality": "3"},
               client_event_id="cfg-normal")
    with pytest.raises(InvalidAnswer, match="quality"):
        submit(store.ctx, tok, item.item_key, "read", {"class": "benign", "quality": "6"},
               client_event_id="cfg-quality6")
    with pytest.raises(InvalidAnswer, match="unknown question"):
        submit(store.ctx, tok, item.item_key, "read",
               {"class": "benign", "quality": "2", "confidence": "20"},
               client_event_id="cfg-unknown")
    submit(store.ctx, tok, item.item_key, "read", {"class": "benign", "quality": "2"},
           client_event_id="cfg-ok-read")
    assert reveal_llm(store.ctx, tok, item.item_key).rationale == "row 1"
    with pytest.raises(ValueError, match="divisible"):
        create_study(store.ctx, "bad", real, [], config={"questions": [
            {"key": "q", "kind": "scale", "stage": "read", "prompt": "?", "min": 0, "max": 10,
             "step": 3}]})


def test_export_flags_simulated_per_reader(store: Any, tmp_path: Path) -> None:
    """A real reader, an imported reader and a simulated panel in one study: ``simulated`` is
    per row (that reader), ``study_has_simulated_readers`` says the study has any; the report
    keeps its SIMULATED banner and lists each reader's own flag."""
    from sonoaudit_raters.report.render import build_report
    from sonoaudit_raters.report.study_data import load_study

    study, _ = create_study(store.ctx, "mixed", store.real_ids(1), store.synthetic_ids(1),
                            seed=2)
    tok = add_reader(store.ctx, study.id, "Dr Real")
    items = view_for_token(store.ctx, tok).items
    for k, it in enumerate(items):
        submit(store.ctx, tok, it.item_key, "read", {"class": "benign", "confidence": "60"},
               client_event_id=f"real-reader-{k}")
    ext = tmp_path / "ext.csv"
    ext.write_text(rows_to_csv([{"item": it.item_key, "reader": "Dr Elsewhere",
                                 "question": "class", "answer": "malignant"} for it in items]))
    import_answers(store.ctx, study.id, ext)
    before = export_answers(store.ctx, study.id)
    assert {(r["reader"], r["simulated"], r["study_has_simulated_readers"]) for r in before} == {
        ("Dr Real", False, False), ("Dr Elsewhere", False, False)}
    assert not build_report(store.ctx, study.id, n_boot=0).json["simulated"]
    simulate_panel(store.ctx, study.id, n_readers=1, accuracy=1.0, seed=0)
    rows = export_answers(store.ctx, study.id)
    per_reader = {(r["reader"], r["simulated"]) for r in rows}
    assert per_reader == {("Dr Real", False), ("Dr Elsewhere", False), ("simulated-1", True)}
    assert all(r["study_has_simulated_readers"] is True for r in rows)
    # 4 items: Dr Real class+confidence, Dr Elsewhere class, simulated-1 class+confidence
    assert len(rows) == 4 * 2 + 4 + 4 * 2
    text = rows_to_csv(rows)
    header = text.splitlines()[0].split(",")
    assert header[-1] == "study_has_simulated_readers"
    csv_rows = list(csv.DictReader(text.splitlines()))
    assert {(r["reader"], r["simulated"], r["study_has_simulated_readers"])
            for r in csv_rows} == {("Dr Real", "False", "True"),
                                   ("Dr Elsewhere", "False", "True"),
                                   ("simulated-1", "True", "True")}
    data = load_study(store.ctx, study.id)
    assert {r["name"]: r["simulated"] for r in data.readers} == {
        "Dr Real": False, "Dr Elsewhere": False, "simulated-1": True}
    report = build_report(store.ctx, study.id, n_boot=0)
    assert report.json["simulated"] is True and "SIMULATED reader panel" in report.html
    assert {r["name"]: r["simulated"] for r in report.json["readers"]} == {
        "Dr Real": False, "Dr Elsewhere": False, "simulated-1": True}
