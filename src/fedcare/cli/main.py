"""``fedcare`` command line."""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedcare import __version__
from fedcare.cli import (  # noqa: F401 (nodekit adds `node init`, approvals `node approve`)
    approvals,
    audit,
    data,
    network,
    nodekit,
    provision,
)
from fedcare.cli import export as export_cli
from fedcare.cli import model as model_cli
from fedcare.cli import site_policy as _site_policy  # noqa: F401 (adds `node policy`)
from fedcare.cli import users as users_cli
from fedcare.cli.errors import fail
from fedcare.core.errors import FedcareError

app = typer.Typer(name="fedcare", help="Federated learning and analytics for healthcare.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode="rich")
console = Console()
app.add_typer(provision.app, name="provision")
app.add_typer(network.hub_app, name="hub")
app.add_typer(network.node_app, name="node")  # with nodekit's init and install-cert
app.add_typer(network.study_app, name="study")
app.command("sites")(network.sites)
app.add_typer(data.app, name="data")
app.add_typer(audit.app, name="audit")
app.add_typer(model_cli.app, name="model")
app.add_typer(export_cli.app, name="export")
app.add_typer(users_cli.app, name="users")
app.command("predict")(model_cli.predict)


def _show_version(value: bool) -> None:
    if value:
        console.print(f"fedcare {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_show_version, is_eager=True,
        help="Print the fedcare version and exit.")] = False) -> None:
    """Federated learning and analytics for healthcare."""


def _config_reference() -> str:
    from fedcare.config import describe_keys

    lines = ["[bold]Config keys[/bold] (TOML or YAML; `fedcare config-reference` prints a table):"]
    for key, default, desc in describe_keys():
        d = f" (default {default})" if default else ""
        lines.append(f"[cyan]{escape(key)}[/cyan]{escape(d)}: {escape(desc)}")
    return "\n\n".join(lines)


def _run(config: Path | dict, out: Path | None, resume: bool, overwrite: bool,
         workers: int | None, force: bool = False, site_policy: list[str] | None = None
         ) -> None:
    from fedcare.cli.render import print_results
    from fedcare.config import load_config, parse_config
    from fedcare.sim.progress import RichProgress
    from fedcare.sim.runner import simulate
    from fedcare.sim.site_policies import parse_site_policy_options

    try:
        policies = parse_site_policy_options(site_policy or [])
        cfg = load_config(config) if isinstance(config, Path) else parse_config(config)
        if workers is not None:
            cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"workers": workers})})
        with RichProgress() as bar, warnings.catch_warnings():
            # the DP check's warning is printed by _print_dp_check, not as a Python warning
            warnings.filterwarnings("ignore", message="DP check", category=UserWarning)
            warnings.showwarning = _show_warning  # a site with very few rows, say
            history = simulate(cfg, output_dir=out, progress=bar, resume=resume,
                               overwrite=overwrite, force=force,
                               on_dp_check=lambda a: _print_dp_check(a, force),
                               site_policies=policies)
    except FedcareError as exc:
        raise fail(exc) from None
    print_results(history.to_dict(), console)
    if out is not None:
        console.print(f"Wrote [bold]{out}[/bold]: history.json, model.safetensors, "
                      f"checkpoints/, report.html (apply the model to new patients with "
                      f"`fedcare predict {out} patients.csv --out predictions.csv`)")


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False)


def _print_dp_check(assessment: Any, force: bool) -> None:
    """The DP check before training; a refused study's error already carries it."""
    if assessment.learnable:
        console.print(assessment.summary(), markup=False, highlight=False)
    elif force:
        console.print("[yellow]warning (--force):[/yellow] " + escape(assessment.summary()),
                      highlight=False)


@app.command(epilog=_config_reference())
def simulate(
    config: Annotated[Path, typer.Argument(help="Study file (.toml, .yaml or .yml).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in --out.")]
    = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier run in --out.")] = False,
    workers: Annotated[int | None, typer.Option(
        help="Override run.workers (0 = auto, 1 = one process).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Run a DP-FedAvg study even though its noise drowns the updates "
        "(the DP check printed before training refuses it otherwise).")] = False,
    site_policy: Annotated[list[str] | None, typer.Option(
        "--site-policy", help="A site policy file every simulated site applies, or "
        "NAME=FILE for one site (repeat the option); a site whose policy refuses the study "
        "is left out, and the run stops when too few remain.")] = None,
) -> None:
    """Run a federated study in simulation (every site on this machine).

    Same engine as a real federation. Writes history.json, the final model, per-round
    checkpoints and report.html to --out (default: ./runs/<study name>, the name made one
    safe folder name).
    """
    from fedcare.config import load_config
    from fedcare.sim.runner import default_output_dir

    try:
        name = load_config(config).study.name
    except FedcareError as exc:
        raise fail(exc) from None
    _run(config, out or default_output_dir(name), resume, overwrite, workers, force,
         site_policy)


DEMO_CONFIG = {
    "study": {"name": "breast-cancer-demo", "seed": 0, "rounds": 30},
    "data": {"source": "builtin", "dataset": "breast_cancer", "sites": 4,
             "partition": "dirichlet", "alpha": 0.5, "test_fraction": 0.25},
    "model": {"name": "logreg"},
    "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
    "strategy": {"name": "fedavg"},
}


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder "
                                                "(default: a new temporary folder).")] = None,
    in_process: Annotated[bool, typer.Option(
        "--in-process", help="Simulate the federation in this process instead.")] = False,
) -> None:
    """A real federation on this machine: hub + 3 hospital nodes over mutual TLS.

    Provisions certificates, starts the hub and three site nodes as separate processes,
    harmonizes three synthetic hospitals' FHIR, OMOP and CSV exports to one data contract,
    checks their quality, trains FedAvg under secure aggregation, compares with each hospital
    alone and with all data pooled, writes report.html, and stops everything it started.
    """
    target = out or Path(tempfile.mkdtemp(prefix="fedcare-demo-"))
    console.print(f"[bold]fedcare {__version__} demo[/bold]: 3 hospitals (FHIR, OMOP, CSV), "
                  "5-year cardiovascular risk, federated vs local-only vs pooled"
                  if not in_process else f"[bold]fedcare {__version__} demo[/bold] (in "
                  "process): 4 simulated sites, breast-cancer data")
    if in_process:
        _run(DEMO_CONFIG, target, resume=False, overwrite=out is not None, workers=None)
        console.print(f"Open the report: [bold]{target / 'report.html'}[/bold]")
        return
    from fedcare.cli.render import print_results
    from fedcare.demo.run import run_demo

    started = time.perf_counter()
    try:
        history = run_demo(target, console)
    except FedcareError as exc:
        raise fail(exc) from None
    print_results(history, console)
    from fedcare.demo.run import print_audit

    print_audit(target, console)  # the hub's and each node's signed audit log verify
    console.print(f"Demo took {time.perf_counter() - started:.0f} s. Report: "
                  f"[bold]{target / 'report.html'}[/bold]")


@app.command("config-reference")
def config_reference(
    fmt: Annotated[str, typer.Option("--format", help="markdown or json")] = "markdown",
    file: Annotated[str, typer.Option("--file", help=(
        "Which file: study (default), contract, index, source, csv-mapping, omop or "
        "code-mapping."))] = "study",
) -> None:
    """Print every key of a settings file with its default and meaning.

    The study file by default; --file names a clinical one: the data contract (and its
    index rules), the site source file (source.toml), a CSV column mapping, an OMOP
    source's source_vocabulary, or the site code mapping.
    """
    from fedcare.config import describe_keys

    if file == "study":
        rows = describe_keys()
    else:
        from fedcare.data.reference import CLINICAL_FILES, clinical_reference

        if file not in CLINICAL_FILES:
            console.print(f"[red]--file {escape(file)!r} is not one of study, "
                          f"{', '.join(CLINICAL_FILES)}[/red]")
            raise typer.Exit(2)
        rows = clinical_reference(file)
    if fmt == "json":
        entries = [{"key": k, "default": d, "description": s} for k, d, s in rows]
        console.print_json(json.dumps(entries))
        return
    print("| key | default | meaning |\n|---|---|---|")
    for k, d, s in rows:
        print(f"| `{k}` | {d.replace('|', '/')} | {s.replace('|', '/')} |")


@app.command()
def version() -> None:
    """Print the fedcare version."""
    console.print(__version__)


@app.command("config-schema")
def config_schema(
    out: Annotated[Path | None, typer.Option("--out", "-o", help=(
        "File to write (default: print it).")
    )] = None,
) -> None:
    """Write a JSON Schema of the study file, for editors.

    Editors use it to complete and check study files as you type: in TOML (Even Better
    TOML, Taplo) a first line `#:schema ./study.schema.json`; in YAML a comment
    `# yaml-language-server: $schema=./study.schema.json`."""
    from fedcare.config import StudyConfig
    from fedcare.core.files import atomic_write

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "title": "fedcare study", **StudyConfig.model_json_schema()}
    text = json.dumps(schema, indent=2)
    if out is None:
        print(text)
        return
    atomic_write(out, text.encode() + b"\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":  # pragma: no cover
    app()
