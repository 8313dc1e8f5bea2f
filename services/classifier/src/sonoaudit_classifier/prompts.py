"""Versioned prompt templates (files under ``prompts/``) and the hash stored with every answer.

A prompt version is frozen once results exist: change the wording in a new version file set
(``v2-*.txt``) rather than editing ``v1``. The hash covers every text sent plus the answer schema,
so an accidental edit shows up as a different ``prompt_hash``."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from string import Template

from sonoaudit_classifier.verdict import verdict_json_schema

CONDITIONS: tuple[str, ...] = ("image", "outline", "side_by_side")
_VERSION = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class UnknownPrompt(ValueError):
    pass


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


def _read(name: str) -> str:
    path = resources.files("sonoaudit_classifier") / "prompts" / name
    if not path.is_file():
        raise UnknownPrompt(f"prompt file prompts/{name} not found")
    return path.read_text(encoding="utf-8").strip()


def load_prompt(version: str, condition: str) -> Prompt:
    if not _VERSION.match(version):
        raise UnknownPrompt(f"prompt version {version!r}: expected letters, digits, '.', '_', '-'")
    if condition not in CONDITIONS:
        raise UnknownPrompt(
            f"unknown condition {condition!r}; expected one of {', '.join(CONDITIONS)}"
        )
    system = _read(f"{version}-system.txt")
    condition_text = _read(f"{version}-condition-{condition}.txt")
    task = Template(_read(f"{version}-task.txt")).substitute(condition_text=condition_text)
    repair = _read(f"{version}-repair.txt")
    digest = hashlib.sha256()
    for part in (version, condition, system, task, repair,
                 json.dumps(verdict_json_schema(), sort_keys=True)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    return Prompt(version, condition, system, task, repair, digest.hexdigest())
