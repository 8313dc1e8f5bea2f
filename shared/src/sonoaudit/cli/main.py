"""Entry point. Each area registers its commands from its own module; heavy imports (torch, the
services) happen inside the commands, so ``sonoaudit --help`` stays fast."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="sonoaudit: can diffusion-generated breast-ultrasound data be trusted?")

# Modules that define ``register(app)``; one per area so areas never edit each other's code.
AREAS = (
    "sonoaudit.cli.ops",
    "sonoaudit.cli.datasets",
    "sonoaudit.cli.generator",
    "sonoaudit.cli.metrics",
    "sonoaudit.cli.classifier",
    "sonoaudit.cli.study",
    "sonoaudit.cli.agreement",
    "sonoaudit.cli.pipeline",
)

for _module in AREAS:
    importlib.import_module(_module).register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
