"""The ``convertsnn`` command line: one thin command per stage (see ``convertsnn --help``).

A command's module (and torch) is imported only when the command runs or shows its own help,
so ``convertsnn --help`` and ``--version`` start in a fraction of a second.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

import click
from click.utils import make_default_short_help

from convertsnn import __version__
from convertsnn.allocator import keep_freed_memory
from convertsnn.errors import ConvertSNNError, InputRangeWarning

# name: (module holding ``command``, its short help as `convertsnn --help` lists it; a test
# checks these against the commands)
COMMANDS = {
    "certify": ("certify", "Certify the smoothed SNN in MODEL_FILE by randomised smoothing (Cohen et al."),
    "convert": ("convert", "Convert the ANN SOURCE into a spiking network file."),
    "demo": ("demo", "Convert the shipped robust MNIST CNN to an SNN and attack it (runs offline)."),
    "export": ("export", "Export the SNN in MODEL_FILE (or zoo:NAME) as ONNX or NIR (docs/export.md)."),
    "import": ("import_nir", "Read the NIR graph in NIR_FILE into an SNN file (docs/export.md lists the nodes)."),
    "profile": ("profile", "Spikes, synaptic operations vs the ANN's MACs, and energy of MODEL_FILE (or zoo:NAME)."),
    "evaluate": ("evaluate", "Evaluate the SNN in MODEL_FILE (written by `convertsnn convert`, or zoo:NAME)."),
    "finetune": ("finetune", "Adversarially finetune the SNN file MODEL, or zoo:NAME (thresholds and weights, BPTT)."),
    "models": ("models", "List the architecture names accepted by `--arch`."),
    "train": ("train", "Adversarially train an ANN from scratch; writes a file `convertsnn convert` reads."),
    "zoo": ("zoo", "Published robust models by name: list, inspect, download, rebuild from recipes."),
}  # fmt: skip


class _Group(click.Group):
    """A click group that turns errors into one line and a non-zero exit code, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConvertSNNError as err:  # one line, even if it quotes user text with newlines
            raise click.ClickException(" ".join(str(err).split())) from None
        except click.UsageError as err:  # a bad option or command: one line, not the usage text
            where = f"{err.ctx.command_path if err.ctx else 'convertsnn'} --help"
            hint = "" if "--help" in err.format_message() else f" (see `{where}`)"
            raise click.ClickException(f"{err.format_message()}{hint}") from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except BrokenPipeError:  # the reader went away (`convertsnn ... | head`): stop quietly
            try:  # and keep the flush at exit from failing again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            raise click.exceptions.Exit(1) from None
        except OSError as err:  # a file-system problem the user can fix: name the path
            if os.environ.get("CONVERTSNN_DEBUG"):
                raise
            where = f"{err.filename}: " if err.filename else ""
            raise click.ClickException(
                f"{where}{err.strerror or err}; check the path and its permissions"
            ) from None
        except Exception as err:
            if os.environ.get("CONVERTSNN_DEBUG"):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise click.ClickException(
                f"internal error ({type(err).__name__}: {first}); "
                "rerun with CONVERTSNN_DEBUG=1 to see the traceback and please report it"
            ) from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Show a warning as one ``Warning: ...`` line on stderr, without source code."""
    text = " ".join(str(message).split())
    click.echo(f"Warning: {text[:300]}", err=True)


def quiet_warnings() -> None:
    """No deprecation noise from dependencies; every other warning as one line.

    torch.jit's FutureWarnings come from timm and torch internals, not from what the user did.
    :class:`InputRangeWarning` is for the Python API: the commands read images in [0, 1] and
    add noise outside that range on purpose (randomised smoothing, noise training).
    """
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.jit")
    warnings.filterwarnings("ignore", category=InputRangeWarning)
    warnings.showwarning = _one_line_warning


def progress_bars_only_on_a_tty() -> None:
    """tqdm bars only when stderr is a terminal: none in log files, pipes or CI output."""
    from tqdm import std

    original = std.tqdm.__init__
    if getattr(original, "tty_only", False):
        return

    def __init__(self, *args, **kwargs) -> None:
        stream = kwargs.get("file") or sys.stderr
        if not (hasattr(stream, "isatty") and stream.isatty()):
            kwargs["disable"] = True
        original(self, *args, **kwargs)

    __init__.tty_only = True
    std.tqdm.__init__ = __init__


class _LazyGroup(_Group):
    """The ``convertsnn`` group: it imports a command's module only when the command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"convertsnn.cli.{COMMANDS[name][0]}").command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [
            (name, make_default_short_help(text, limit))
            for name, (_, text) in sorted(COMMANDS.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="convertsnn")
def main() -> None:
    """Turn adversarially trained ANNs into adversarially robust spiking networks.

    Start with `convertsnn demo`; then `convert` an ANN, `evaluate` the SNN file it writes.
    """
    quiet_warnings()
    progress_bars_only_on_a_tty()
    keep_freed_memory()
