"""The reader study: set-up, blinded reading, append-only answers, export/import, simulation.

In-process API (the demo pipeline and the CLI call these; the web routes are in ``study_api``)."""

from sonoaudit_raters.study.config import DisplayConfig, LLMFilter, Question, StudyConfig
from sonoaudit_raters.study.errors import (
    AccessDenied,
    EmptyStudy,
    ImportProblems,
    InvalidAnswer,
    Locked,
    NotAssigned,
    NotFound,
    StudyError,
)
from sonoaudit_raters.study.export import (
    COLUMNS,
    ImportReport,
    export_answers,
    export_events,
    export_json,
    import_answers,
    rows_to_csv,
)
from sonoaudit_raters.study.reading import own_answers, progress, reveal_llm, submit
from sonoaudit_raters.study.setup import (
    add_reader,
    create_study,
    reader_link,
    revoke_reader,
    select_images,
)
from sonoaudit_raters.study.simulate import simulate_panel

__all__ = [
    "COLUMNS", "AccessDenied", "DisplayConfig", "EmptyStudy", "ImportProblems", "ImportReport",
    "InvalidAnswer", "LLMFilter", "Locked", "NotAssigned", "NotFound", "Question", "StudyConfig",
    "StudyError", "add_reader", "create_study", "export_answers", "export_events", "export_json",
    "import_answers", "own_answers", "progress", "reader_link", "reveal_llm", "revoke_reader",
    "rows_to_csv", "select_images", "simulate_panel", "submit",
]
