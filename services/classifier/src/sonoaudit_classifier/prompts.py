"""Versioned prompt templates (files under ``prompts/``) and the hash stored with every answer.

A prompt version is frozen once results exist: change the wording in a new version file set
(``v2-*.txt``) rather than editing ``v1``. The hash covers every text sent plus the answer schema,
so an accidental edit shows up as a different ``prompt_hash`` (and the batch refuses to mix it
with answers stored under the old wording, see :class:`PromptChanged`).

Users add their own versions in ``SONOAUDIT_PROMPT_DIR`` (same file names); a version shipped
with the package cannot be redefined there, so ``v1`` means the same words everywhere."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template
from typing import get_args

from sonoaudit.messages.payloads import Condition

from sonoaudit_classifier.verdict import verdict_json_schema

# The bus message's type is the one list of conditions: a new one there is accepted here too.
CONDITIONS: tuple[str, ...] = get_args(Condition)
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class UnknownPrompt(ValueError):
    pass


class PromptChanged(ValueError):
    """Answers stored under this prompt version were asked with different words: reusing them
    would mix two prompts under one version (results are keyed by version, not by hash)."""

    def __init__(self, version: str, condition: str, stored: str, current: str) -> None:
        super().__init__(
            f"prompt {version!r} (condition {condition!r}) changed since answers were stored "
            f"(stored hash {stored[:12]}…, now {current[:12]}…): put the new wording in a new "
            "prompt version instead of editing a used one")


@dataclass(frozen=True)
class Prompt:
    version: str
    condition: str
    system: str
    task: str  # the user text sent after the image
    repair_template: str
    hash: str

    def repair(self, previous: str, problem: str) -> str:
        return Template(self.repair_template).substitute(previous=previous[:4000], problem=problem)


def _packaged() -> Traversable:
    return resources.files("sonoaudit_classifier") / "prompts"


def _source(version: str, prompt_dir: Path | None) -> tuple[Traversable | Path, str]:
    """Where the files of ``version`` live: the package, or else the user's prompt folder."""
    shipped = (_packaged() / f"{version}-system.txt").is_file()
    mine = prompt_dir is not None and (prompt_dir / f"{version}-system.txt").is_file()
    if shipped and mine:
        raise UnknownPrompt(f"prompt version {version!r} is shipped with sonoaudit and also "
                            f"defined in {prompt_dir}: give your version another name")
    if shipped:
        return _packaged(), "prompts/"
    if mine:
        assert prompt_dir is not None
        return prompt_dir, f"{prompt_dir}/"
    where = "prompts/" + (f" or {prompt_dir}/" if prompt_dir is not None else "")
    raise UnknownPrompt(f"prompt version {version!r} not found: no {version}-system.txt in "
                        f"{where}")


def _read(folder: Traversable | Path, shown: str, name: str) -> str:
    path = folder / name
    if not path.is_file():
        raise UnknownPrompt(f"prompt file {shown}{name} not found")
    return path.read_text(encoding="utf-8").strip()


def load_prompt(version: str, condition: str, prompt_dir: Path | None = None) -> Prompt:
    if not _VERSION.match(version):
        raise UnknownPrompt(f"prompt version {version!r}: expected letters, digits, '.', '_', '-'")
    if condition not in CONDITIONS:
        raise UnknownPrompt(
            f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}"
        )
    folder, shown = _source(version, prompt_dir)
    system = _read(folder, shown, f"{version}-system.txt")
    condition_text = _read(folder, shown, f"{version}-condition-{condition}.txt")
    try:
        task = Template(_read(folder, shown, f"{version}-task.txt")).substitute(
            condition_text=condition_text)
        repair_template = _read(folder, shown, f"{version}-repair.txt")
        Template(repair_template).substitute(previous="", problem="")
    except (KeyError, ValueError) as exc:
        raise UnknownPrompt(f"prompt {version!r}: bad template placeholder {exc} (allowed: "
                            "$condition_text in the task, $previous and $problem in the "
                            "repair)") from exc
    repair = repair_template
    digest = hashlib.sha256()
    for part in (version, condition, system, task, repair,
                 json.dumps(verdict_json_schema(), sort_keys=True)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return Prompt(version, condition, system, task, repair, digest.hexdigest())
