"""The ``forcegp`` click group: float64 first, errors in one line with the library's parameter
names translated into this command line's flags, exit codes (2 bad input, 1 numerical or
resource failure or a bug, 130 Ctrl-C)."""

from __future__ import annotations

import os
import sys
import traceback

import click

from ..errors import ForceGPError
from .options import flags_for


def enable_x64() -> None:
    """Models are float64: the command switches JAX to float64 before anything touches JAX.
    JAX is not imported for that (``--help`` should not pay for it): where it is not imported
    yet, its environment variable makes it start in float64."""
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_enable_x64", True)
    else:
        os.environ["JAX_ENABLE_X64"] = "1"


#: The most disk the compilation cache takes; the least recently used programs go first.
CACHE_MAX_BYTES = 2 * 1024**3


def compile_cache_settings(environ, jax_imported: bool) -> dict:
    """The environment variables that give a ``forcegp`` process JAX's persistent compilation
    cache: XLA compiles the programs of a model's shapes (its prediction, training step and fit)
    once per machine instead of once per command. A body-ordered model's programs take up to
    minutes to compile; a later ``forcegp test``, ``predict``, ``md`` or retraining of the same model
    shapes reads them from disk. The cache is keyed by the program, JAX version and backend, so a
    stale entry is never used; at most CACHE_MAX_BYTES, least recently used entries dropped first.

    FORCEGP_COMPILE_CACHE: a folder for the cache, or 0 (or off) for none; by default
    $XDG_CACHE_HOME/forcegp/jax (~/.cache/forcegp/jax). A JAX_COMPILATION_CACHE_DIR the user
    set wins. Nothing is set where JAX is imported already: a library caller's JAX settings are
    its own."""
    choice = environ.get("FORCEGP_COMPILE_CACHE", "").strip()
    if (
        jax_imported
        or choice.lower() in ("0", "off", "no", "false")
        or "JAX_COMPILATION_CACHE_DIR" in environ
    ):
        return {}
    if not choice:
        base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        choice = os.path.join(base, "forcegp", "jax")
    return {
        "JAX_COMPILATION_CACHE_DIR": choice,
        "JAX_COMPILATION_CACHE_MAX_SIZE": environ.get(
            "JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_MAX_BYTES)
        ),
    }


def error(message: str) -> None:
    click.echo(f"forcegp: error: {message}", err=True)


class ForceGPGroup(click.Group):
    """A click group that reports library errors in one line, with a traceback only on --debug.

    ForceGPError: its message and exit status (2 for bad input). KeyboardInterrupt: exit 130.
    Anything else is a bug: one line and exit 1. Click's own usage errors pass through (exit 2).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except ForceGPError as err:
            self._report(ctx, flags_for(str(err)))
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            self._report(ctx, "interrupted")
            ctx.exit(130)
        except Exception as err:  # a bug, or an unforeseen environment problem
            if out_of_device_memory(err):
                self._report(
                    ctx,
                    f"out of device memory ({first_line(err)}); lower --max-memory, "
                    "--batch-size or --inducing",
                )
                ctx.exit(1)
            self._report(
                ctx,
                f"unexpected {type(err).__name__}: {err} (rerun with --debug for a traceback, "
                "and please report it)",
            )
            ctx.exit(1)

    @staticmethod
    def _report(ctx: click.Context, message: str) -> None:
        if ctx.params.get("debug"):
            traceback.print_exc(file=sys.stderr)
        error(first_line(message))


def first_line(message) -> str:
    message = str(message).strip()
    return message.splitlines()[0] if message else "failed"


def out_of_device_memory(err: Exception) -> bool:
    """An allocation XLA could not make (a GPU's memory, which the planned checks compare with
    only where the backend reports it) surfaces as a runtime error, not a ForceGPError."""
    return type(err).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and (
        "RESOURCE_EXHAUSTED" in str(err)
    )


def _version() -> str:
    from .. import __version__

    return __version__


@click.group(cls=ForceGPGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(version=_version(), prog_name="forcegp")
def cli(debug: bool) -> None:
    """Gaussian-process force fields with calibrated uncertainties (DSoftKI).

    Energies are in eV, lengths in Å and forces in eV/Å throughout.
    """
    enable_x64()  # also here, for callers that invoke the group directly (CliRunner)


def main(argv=None) -> None:
    """Console entry point (``forcegp`` and ``python -m forcegp``)."""
    enable_x64()  # first thing: models are float64
    os.environ.update(compile_cache_settings(os.environ, "jax" in sys.modules))
    cli.main(args=argv, prog_name="forcegp")
