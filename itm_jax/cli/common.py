"""What every command shares: the config and distributed flags, ``--help``, and how a command
ends on a user's mistake (one line naming the problem and the fix, exit code 2 for usage
errors and 1 otherwise; ``--verbose`` adds the traceback).

Configs load locked, so a misspelt override is an error rather than a new field. List
elements are addressed as ``losses.0`` (rewritten to ml_collections' ``losses[0]``).
Multi-process runs (pods, SLURM) call ``jax.distributed.initialize`` first: automatically
where JAX detects the cluster, or from ``--coordinator_address/--num_processes/--process_id``.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from itm_jax import host_memory
from itm_jax.errors import ConfigError, UserError

FLAGS = flags.FLAGS


def define_config_flags(workdir_help: str) -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Config file and preset, e.g. configs/default.py:smoke; override any "
        "field with --config.FIELD=VALUE.", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)


def define_distributed_flags() -> None:
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    flags.DEFINE_bool("multiprocess", False, "Call jax.distributed.initialize() with cluster "
                      "auto-detection (TPU pods, SLURM); implied by --coordinator_address.")


def initialize_distributed() -> None:
    import jax

    if FLAGS.coordinator_address is not None:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif FLAGS.multiprocess:
        jax.distributed.initialize()


def list_index_syntax(argv: Sequence[str]) -> list[str]:
    """``--config.losses.0.margin=x`` -> ``--config.losses[0].margin=x`` (flag names only)."""

    def fix(arg: str) -> str:
        if not arg.startswith("--config."):
            return arg
        name, eq, value = arg.partition("=")
        return re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", name) + eq + value

    return [fix(a) for a in argv]


def config_file(argv: Sequence[str]) -> str | None:
    for arg in argv:
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
    return None


def _check_config_file(argv: Sequence[str]) -> None:
    """A missing config file is named before absl buries it in a traceback; the directory
    holding ``configs/`` goes on the path so configs can ``from configs import default``."""
    path = config_file(argv)
    if path is None:
        return
    if not os.path.isfile(path):
        raise ConfigError(f"--config={path}: no such file; pass a config file such as "
                          "configs/default.py (add :smoke for a seconds-long run).")
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
        sys.path.insert(0, root)


def _flag_error(error: Exception, argv: Sequence[str]) -> ConfigError:
    """absl's flag errors (with a config file's traceback inside) as one line."""
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)):  # a misspelt --config.FIELD
        name = re.search(r"'(\w+)", text)
        guess = re.search(r'Did you mean "(\w+)"', text)
        name = name[1] if name else "?"
        flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and
                     re.search(rf"[.\]]{name}\b", a.split("=")[0])), f"--config...{name}")
        return ConfigError(f"{flag}: no config field {name!r} (configs are locked)"
                           + (f"; did you mean {guess[1]!r}?" if guess else "; check the "
                              "spelling against the config file."))
    if "Traceback" in text:  # a config file raised: its own last line says what is wrong
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        option = text.split(":", 1)[0]
        return ConfigError(f"{option}: {last}")
    return ConfigError(f"{text.splitlines()[0]} (--help lists the flags).")


def print_help(doc: str, names: Sequence[str]) -> None:
    print(f"{doc.strip()}\n\nflags:")
    for name in (*names, "verbose"):
        flag = FLAGS[name]
        default = "" if flag.default in (None, "") else f" (default: {flag.default})"
        print(f"  --{name}: {' '.join(flag.help.split())}{default}")


def run(main: Callable[[], object], *, prog: str, doc: str, names: Sequence[str],
        required: Sequence[str] = ()) -> None:
    """Parses ``sys.argv`` and calls ``main()``; ``--help`` prints the command's ``doc`` and
    its flags ``names``, one line each.

    A ``UserError`` (or a flag error) ends the process with its one-line message; process-wide
    settings that must precede JAX (host memory, log verbosity) are made here.
    """
    flags.DEFINE_bool("verbose", False, "Show the traceback of an error, not just its message.")
    sys.argv[:] = argv = list_index_syntax(sys.argv)  # config_flags reads sys.argv itself
    verbose = "--verbose" in argv
    if any(a in ("-h", "--help", "--helpshort", "-?") for a in argv[1:]):
        print_help(doc, names)
        sys.exit(0)
    try:
        _check_config_file(argv)
        try:
            FLAGS(argv)
        # config_flags raises the config's own errors for an override it cannot apply.
        except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
            raise _flag_error(e, argv) from None
        missing = [f"--{n}" for n in required if FLAGS[n].value is None]
        if missing:
            raise ConfigError(f"{prog} needs {' and '.join(missing)} (--help lists the flags).")
        host_memory.reuse_freed_memory()  # before JAX starts its threads
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        app.run(lambda _: main(), argv=argv[:1], flags_parser=lambda _: argv[:1])
    except UserError as e:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Background threads (data loading, checkpointing) must not print over the message
        # while the interpreter shuts down; every file was closed on the way here.
        os._exit(e.exit_code)
