"""The ``convertsnn`` command line: one thin command per stage (see ``convertsnn --help``)."""

from __future__ import annotations

import os
import sys

import click

from convertsnn import __version__
from convertsnn.errors import ConvertSNNError


class _Group(click.Group):
    """A click group that turns errors into one line and a non-zero exit code, no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ConvertSNNError as err:
            raise click.ClickException(str(err)) from None
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
        except Exception as err:
            if os.environ.get("CONVERTSNN_DEBUG"):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise click.ClickException(
                f"internal error ({type(err).__name__}: {first}); "
                "rerun with CONVERTSNN_DEBUG=1 to see the traceback and please report it"
            ) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="convertsnn")
def main() -> None:
    """Turn adversarially trained ANNs into adversarially robust spiking networks.

    Start with `convertsnn demo`; then `convert` an ANN, `evaluate` the SNN file it writes.
    """


def _register() -> None:
    from convertsnn.cli import (
        certify,
        convert,
        demo,
        evaluate,
        export,
        finetune,
        import_nir,
        models,
        profile,
        train,
        zoo,
    )

    for module in (certify, convert, demo, evaluate, finetune, models, train, zoo):
        main.add_command(module.command)
    for module in (export, import_nir, profile):
        main.add_command(module.command)


_register()
