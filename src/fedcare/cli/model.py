"""``fedcare predict`` and ``fedcare model export``: use a finished study's model bundle
(thin over :mod:`fedcare.engine.predict`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.cli.errors import fail
from fedcare.cli.network import CaFile, Federation, HubUrl, TokenFile, _client
from fedcare.core.errors import DataError, FedcareError

if TYPE_CHECKING:
    from fedcare.engine.predict import SavedModel

app = typer.Typer(name="model", help="Inspect and export a study's saved model.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
console = Console()

_MODEL_HELP = ("The model: a run folder or its model.safetensors (from `fedcare simulate "
               "--out`, or `fedcare export download` for a networked study).")


class ExportFormat(StrEnum):
    onnx = "onnx"


def _load(model: Path) -> SavedModel:
    from fedcare.engine.predict import load_model

    return load_model(model)


def _usage_error(exc: FedcareError) -> typer.Exit:
    """A model or table the user must fix: exit 2 (bundle errors included)."""
    return fail(exc, code=2)


def predict(
    model: Annotated[Path, typer.Argument(help=_MODEL_HELP)],
    data: Annotated[Path, typer.Argument(help="New patients: a CSV or Parquet table with the "
                                              "model's feature columns (others are ignored).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions file (.csv).")],
    id_column: Annotated[str | None, typer.Option(
        "--id", help="A column of DATA copied beside each prediction (e.g. patient_id).")]
    = None,
) -> None:
    """Apply a study's model to new patients.

    Checks that DATA has every feature column the model was trained on (numeric, no missing
    values), applies the federation's standardization stored in the model, and writes one row
    per patient: the id column (--id), probability_<class> per class and prediction (the
    most probable class, coded as the label was in training); regression: prediction.
    """
    from fedcare.core.files import atomic_write
    from fedcare.engine.predict import read_table

    try:
        saved = _load(model)
        frame = read_table(data)
        table = saved.predictions(frame, id_column=id_column, source=str(data))
    except FedcareError as exc:
        raise _usage_error(exc) from None
    try:
        atomic_write(out, table.to_csv(index=False).encode())
    except OSError as exc:
        raise fail(DataError(f"cannot write {out}: {exc.strerror or exc}"), code=2) from None
    console.print(f"Wrote {len(table)} prediction(s) to [bold]{escape(str(out))}[/bold]")


@app.callback()
def _group() -> None:
    """Inspect and export a study's saved model."""


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help=_MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write (e.g. model.onnx).")],
    fmt: Annotated[ExportFormat, typer.Option(
        "--format", help="onnx: one graph from raw features to probabilities.")]
    = ExportFormat.onnx,
) -> None:
    """Export the model for serving without fedcare.

    ONNX: input `features` (rows x features, float32, raw values in the model's column
    order, see `fedcare model show`), output `probabilities` (one column per class) or
    `prediction` (regression); the standardization is inside the graph and the model's
    header is in the file's metadata (fedcare_model).
    """
    from fedcare.engine.predict import export_onnx

    try:
        export_onnx(_load(model), out)
    except FedcareError as exc:
        raise _usage_error(exc) from None
    console.print(f"Wrote [bold]{escape(str(out))}[/bold] ({fmt.value})")


_TARGET_HELP = ("A run folder or model file (local), or a registry id (from `fedcare model "
                "list`: the hub's registry).")


@app.command("list")
def list_models(study: Annotated[str | None, typer.Option(
                    help="Only this study's releases.")] = None,
                federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
                token_file: TokenFile = None) -> None:
    """The hub's model registry: every released global model, oldest first."""
    from rich.table import Table

    try:
        models = _client(federation, hub, ca, token_file).models(study)
    except FedcareError as exc:
        raise fail(exc, 2) from None
    table = Table("id", "study", "study id", "created", "model", "rounds", "score", "privacy",
                  "sites")
    for m in models:
        score = "-" if m.score is None else f"{m.primary_metric} {m.score:.3f}"
        table.add_row(m.id, escape(m.study), m.study_id or "-", m.created[:19], m.model,
                      str(m.rounds), score, m.privacy, ", ".join(m.sites))
    console.print(table)


@app.command()
def show(model: Annotated[str, typer.Argument(help=_TARGET_HELP)],
         federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
         token_file: TokenFile = None) -> None:
    """A model file or run folder: the model's header (study, task, features in order,
    label coding, model). A registry id: its registry entry from the hub."""
    import json

    if not Path(model).exists():
        try:
            entry = _client(federation, hub, ca, token_file).model_entry(model)
        except FedcareError as exc:
            raise fail(exc, 2) from None
        console.print_json(entry.to_json())
        return
    try:
        saved = _load(Path(model))
    except FedcareError as exc:
        raise _usage_error(exc) from None
    header = saved.bundle.header()
    for step in header["preprocessing"]:  # the numbers are in the file; show what they are
        step["mean"] = f"{len(step['mean'])} values"
        step["std"] = f"{len(step['std'])} values"
    console.print_json(json.dumps(header))


class CardFormat(StrEnum):
    md = "md"
    html = "html"


@app.command()
def card(
    run: Annotated[str, typer.Argument(help="A run folder (`fedcare simulate --out`) or its "
                                            "registry.json, or a registry id on the hub.")],
    fmt: Annotated[CardFormat, typer.Option("--format", help="md (Markdown) or html "
                                            "(one self-contained page).")] = CardFormat.md,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: "
                                             "print).")] = None,
    federation: Federation = None, hub: HubUrl = None, ca: CaFile = None,
    token_file: TokenFile = None,
) -> None:
    """The model card of a released model: intended use, data, performance next to the
    local-only and pooled baselines, privacy, secure aggregation, limitations, lineage."""
    from fedcare.core.files import atomic_write
    from fedcare.engine.registry import card_html, card_markdown, read_entry

    try:
        if Path(run).exists():
            entry = read_entry(Path(run))
            text = card_html(entry) if fmt is CardFormat.html else card_markdown(entry)
        else:
            text = _client(federation, hub, ca, token_file).model_card(run, fmt.value)
    except FedcareError as exc:
        raise _usage_error(exc) from None
    if out is None:
        typer.echo(text)
        return
    atomic_write(out, text.encode())
    console.print(f"Wrote [bold]{escape(str(out))}[/bold]")
