"""All tables. Each area keeps its tables in its own module; they are imported here so that
Alembic sees them."""

from sonoaudit.db.base import Base
from sonoaudit.db.models.classifier import LLMClassification
from sonoaudit.db.models.core import Dataset, DeadLetter, Image, Job
from sonoaudit.db.models.generator import GenerationRun, Model, TrainingRun
from sonoaudit.db.models.metrics import MetricRun
from sonoaudit.db.models.pipeline import PipelineRun, PipelineStep
from sonoaudit.db.models.study import Answer, Assignment, Reader, Study, StudyItem

__all__ = [
    "Answer",
    "Assignment",
    "Base",
    "Dataset",
    "DeadLetter",
    "GenerationRun",
    "Image",
    "Job",
    "LLMClassification",
    "MetricRun",
    "Model",
    "PipelineRun",
    "PipelineStep",
    "Reader",
    "Study",
    "StudyItem",
    "TrainingRun",
]
