"""The command line's flags -> Config step, for tests that check what flags become."""

from __future__ import annotations

from tf_simclr import cli
from tf_simclr.config import Config


def config_from_argv(*argv: str) -> Config:
    """The Config `tf-simclr ARGV` would run with (the flags are reset afterwards)."""
    cli.FLAGS(["tf-simclr", *argv])
    try:
        return cli.config_from_flags()
    finally:
        cli.FLAGS.unparse_flags()
