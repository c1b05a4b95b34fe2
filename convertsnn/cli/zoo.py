"""``convertsnn zoo list | info NAME | pull NAME | build NAME``: the model zoo (docs/zoo.md)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from convertsnn.cli.options import write_json_out
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import format_table
from convertsnn.zoo.hub import cache_path, sha256_file
from convertsnn.zoo.loading import pull
from convertsnn.zoo.pipeline import load_pipeline, run_pipeline
from convertsnn.zoo.registry import INDEX_ENV, Metrics, ZooEntry, load_index


def _values(metrics: Metrics) -> str:
    return ", ".join(f"{key} {100 * value:.2f}" for key, value in metrics.values.items())


def _where(entry: ZooEntry) -> str:
    """Where the entry's file is on this machine and whether it is there (no hashing)."""
    local = entry.local_file()
    if local is not None:
        return f"{local} ({'present' if local.is_file() else 'missing'})"
    cached = cache_path(str(entry.url), entry.sha256)
    return f"{cached} ({'cached' if cached.is_file() else 'not downloaded yet'})"


def _check_step(args: list[str]) -> None:
    """Parse one pipeline step's arguments as the CLI would, without running it."""
    from convertsnn.cli import main  # the CLI group imports this module

    parent = click.Context(main, info_name="convertsnn")
    step = main.get_command(parent, args[0]) if args else None
    if step is None:
        raise ConvertSNNError(f"unknown command in recipe step 'convertsnn {shlex.join(args)}'")
    try:
        step.make_context(args[0], list(args[1:]), parent=parent)
    except click.ClickException as err:
        raise ConvertSNNError(
            f"recipe step 'convertsnn {shlex.join(args)}': {err.format_message()}"
        ) from None


@click.group("zoo")
@click.option(
    "--index",
    type=click.Path(dir_okay=False),
    help=f"Zoo index file (default: ${INDEX_ENV} or model_zoo/index.yaml).",
)
@click.pass_context
def command(ctx: click.Context, index: str | None) -> None:
    """Published robust models by name: list, inspect, download, rebuild from recipes."""
    ctx.obj = {"index": index}


@command.command("list")
@click.argument("pattern", required=False)
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the entries as JSON.")
@click.pass_context
def list_command(ctx: click.Context, pattern: str | None, out: str | None) -> None:
    """List the zoo models (PATTERN filters names with wildcards, e.g. '*mnist*')."""
    index = load_index(ctx.obj["index"])
    entries = [index.entries[n] for n in index.names(pattern)]
    header = [
        "name",
        "kind",
        "architecture",
        "dataset",
        "T",
        "objective",
        "metrics %",
        "measured on",
    ]
    lines = [
        [
            e.name, e.kind, e.architecture, e.dataset, str(e.timesteps or "-"), e.objective or "-",
            _values(e.metrics[0]) if e.metrics else "-",
            f"{e.metrics[0].suite}: {e.metrics[0].data}" if e.metrics else "-",
        ]
        for e in entries
    ]  # fmt: skip
    click.echo(f"{len(entries)} model(s) in {index.path}")
    if lines:
        click.echo(format_table(header, lines))
    write_json_out(out, {"index": str(index.path), "models": [e.to_dict() for e in entries]})


@command.command("info")
@click.argument("name")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the entry as JSON.")
@click.pass_context
def info_command(ctx: click.Context, name: str, out: str | None) -> None:
    """Show everything the index records about zoo model NAME."""
    entry = load_index(ctx.obj["index"]).get(name)
    click.echo(f"{entry.name} ({entry.kind}): {entry.description}".rstrip(": "))
    for key in ("architecture", "dataset", "source", "timesteps", "neuron", "objective", "recipe"):
        click.echo(f"  {key}: {getattr(entry, key) if getattr(entry, key) is not None else '-'}")
    if entry.recipe:
        click.echo(f"  rebuild: convertsnn zoo build {entry.name}")
    click.echo(f"  file: {entry.location} -> {_where(entry)}")
    click.echo(f"  sha256: {entry.sha256}" + (f" ({entry.size} bytes)" if entry.size else ""))
    for metrics in entry.metrics:
        click.echo(f"  metrics [{metrics.suite}] on {metrics.data}: {_values(metrics)} %")
        click.echo(f"    measured with: {metrics.command}")
    write_json_out(out, entry.to_dict())


@command.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Download again even if a cached copy exists.")
@click.pass_context
def pull_command(ctx: click.Context, name: str, force: bool) -> None:
    """Download (if needed) and verify the file of zoo model NAME; print its path."""
    path = pull(name, force=force, index=ctx.obj["index"])
    click.echo(f"{name}: {path} ({path.stat().st_size} bytes, sha256 verified)")


@command.command("build")
@click.argument("target")
@click.option(
    "--out", "-o", type=click.Path(dir_okay=False), help="Output file (default: NAME.safetensors)."
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Folder for intermediate files and run directories (default: zoo_build/NAME).",
)
@click.option(
    "--data-root",
    type=click.Path(file_okay=False),
    help="Folder holding the datasets, {data} in recipes (default: ../shared/data next to the "
    "repository).",
)
@click.option("--from-step", default=1, show_default=True, type=int, help="Skip earlier steps.")
@click.option("--dry-run", is_flag=True, help="Check and print the steps without running them.")
@click.pass_context
def build_command(
    ctx: click.Context,
    target: str,
    out: str | None,
    work_dir: str | None,
    data_root: str | None,
    from_step: int,
    dry_run: bool,
) -> None:
    """Rebuild zoo model TARGET from its recipe, or run the pipeline recipe TARGET (.yaml)."""
    entry = None
    if target.endswith((".yaml", ".yml")):
        pipeline, name = load_pipeline(target), Path(target).stem
    else:
        entry = load_index(ctx.obj["index"]).get(target)
        recipe = entry.recipe_file()
        if recipe is None:
            raise ConvertSNNError(f"zoo model '{target}' records no recipe to rebuild it from")
        pipeline, name = load_pipeline(recipe), entry.name
    click.echo(
        f"{pipeline.path} ({len(pipeline.steps)} steps): {pipeline.description}".rstrip(": ")
    )
    path = run_pipeline(pipeline, out or f"{name}.safetensors", work_dir or Path("zoo_build") / name,
                        data_root, from_step, click.echo, _check_step, dry_run)  # fmt: skip
    if dry_run:
        click.echo(f"dry run: every step parses; the pipeline would produce {path}")
        return
    digest = sha256_file(path)
    if entry is None:
        click.echo(f"built {path}: {path.stat().st_size} bytes, sha256 {digest}")
    elif digest == entry.sha256:
        click.echo(f"built {name} -> {path}: identical to the zoo file (sha256 matches)")
    else:
        click.echo(
            f"built {name} -> {path} (sha256 {digest[:16]}... differs from the zoo file, as "
            f"expected when versions or hardware differ); compare its metrics with "
            f"`convertsnn zoo info {name}`"
        )
