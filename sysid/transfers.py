"""``sysid import-checkpoint`` and ``sysid transfers``: external checkpoints and transferred models.

The commands are registered on the main group by :func:`add_commands` (called from ``sysid.cli``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

__all__ = ["add_commands", "config_key"]

_HEX = re.compile(r"^[0-9a-f]{1,32}$")
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def config_key(schemas: Any, table: Any, text: str) -> dict[str, str]:
    """The key of the one row of a config table whose hash starts with ``text`` (``[fn:]hash-prefix``).

    Raises:
        ValueError: not hexadecimal, or no row / several rows match.
    """
    role = table._role
    fn, _, prefix = text.rpartition(":")
    prefix = prefix.strip().lower()
    if not _HEX.match(prefix):
        raise ValueError(f"--{role} must be a {role} hash (or a unique prefix of one), got {text!r}")
    query = table() & f"{role}_hash LIKE '{prefix}%'"
    if fn:
        query = query & {f"{role}_fn": fn}
    keys = query.keys()
    if len(keys) != 1:
        raise ValueError(f"--{role} {text!r} matches {len(keys)} registered {role}s; give more of the hash")
    return keys[0]


@click.command("import-checkpoint", context_settings=CONTEXT)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dataset", required=True, metavar="HASH", help="Dataset hash (a unique prefix) the model predicts."
)
@click.option(
    "--model",
    required=True,
    metavar="HASH",
    help="Model hash (a unique prefix) that builds the architecture.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the trained-model row.")
@click.option(
    "--max-mb", type=click.IntRange(min=1), default=2048, show_default=True, help="Largest file accepted."
)
@click.option(
    "--no-populate", is_flag=True, help="Leave data info, scores and readout parameters to the workers."
)
def import_checkpoint(
    file: Path, dataset: str, model: str, seed: int, max_mb: int, no_populate: bool
) -> None:
    """Register an external state dict (e.g. a Sensorium 2022 pretrained model) as a trained model.

    \b
    FILE is a `torch.save(model.state_dict(), FILE)` file. It is read with weights_only=True and
    loaded strictly into the model that the --model config builds for the --dataset; a file that
    does not load strictly is refused and nothing is written. Otherwise a TrainedModel row is made
    (trainer pipeline.training.imported.imported_checkpoint with the file's absolute path and
    sha256; ImportedCheckpoint records the import) with its DataInfo, NeuronScore and
    ReadoutParameters rows, so it shows in `sysid results` and reports and can be a transfer source.

    \b
    Examples:
      sysid register sensorium.yaml                # the dataset and the model config
      sysid import-checkpoint generalization_model.pth --dataset 3f9a --model 11be
    """
    from schemas.checkpoint_import import import_checkpoint as run_import
    from schemas.job_events import describe_key

    from .database import activate

    schemas = activate()
    key = run_import(
        file,
        config_key(schemas, schemas.Dataset, dataset),
        config_key(schemas, schemas.Model, model),
        seed=seed,
        max_bytes=max_mb * 2**20,
        populate=not no_populate,
    )
    row = (schemas.TrainedModel & key).to_dicts()
    score = f", validation correlation {row[0]['score']:.4f}" if row else " (the workers compute its rows)"
    click.echo(f"imported {file} as TrainedModel {describe_key(key)}{score}")


def add_commands(group: click.Group) -> None:
    """Add this module's commands to the ``sysid`` group."""
    group.add_command(import_checkpoint)
