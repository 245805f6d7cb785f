"""Import jaxmarl lazily and without its side effects on the standard streams.

``import jaxmarl`` imports every one of its environment families (STORM alone takes 2 s on a
2-core CPU), although a run uses one. The packages ``jaxmarl`` and ``jaxmarl.environments``
are put in ``sys.modules`` as empty packages with the real directories, so that
``from jaxmarl.environments.mpe import SimpleSpreadMPE`` loads the MPE family only. The first
time code asks one of them for a name it does not have (``jaxmarl.make``), its real
``__init__`` runs, quietly, into the same module.

Importing jaxmarl for real prints a notice about optional submodules, and its MABrax module
swaps sys.stdout / sys.stderr for /dev/null and then "restores" them to the interpreter's
original streams, dropping any redirection in place (pytest's capture, a caller's
redirect_stdout); the real ``__init__`` runs with print silenced and the streams put back.
"""

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from unittest import mock


def _quietly(fn):
    streams = sys.stdout, sys.stderr
    try:
        with mock.patch("builtins.print"):
            return fn()
    finally:
        sys.stdout, sys.stderr = streams


def _lazy_package(name: str, directory: Path) -> types.ModuleType:
    """An empty package ``name`` over ``directory`` whose real ``__init__`` runs on the first
    missing attribute."""
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(directory)]
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(directory / "__init__.py")
    state = {"loaded": False}

    def __getattr__(attr: str):
        if attr.startswith("__") or state["loaded"]:
            raise AttributeError(attr)
        if (directory / f"{attr}.py").is_file() or (directory / attr / "__init__.py").is_file():
            # a submodule (`from jaxmarl.environments import spaces`): just that one
            return importlib.import_module(f"{name}.{attr}")
        state["loaded"] = True
        code = compile((directory / "__init__.py").read_text(), module.__file__, "exec")
        _quietly(lambda: exec(code, module.__dict__))  # noqa: S102 - the package's own code
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = __getattr__
    return module


if "jaxmarl" not in sys.modules:
    _spec = importlib.util.find_spec("jaxmarl")
    if _spec is None or not _spec.submodule_search_locations:
        raise ImportError("jaxmarl is not installed")
    _root = Path(next(iter(_spec.submodule_search_locations)))
    _pkg = _lazy_package("jaxmarl", _root)
    _envs = _lazy_package("jaxmarl.environments", _root / "environments")
    sys.modules["jaxmarl"] = _pkg
    sys.modules["jaxmarl.environments"] = _envs
    _pkg.environments = _envs
    # the MPE package's __init__ imports its matplotlib visualiser (0.9 s) with every
    # scenario: a run imports the one scenario module it uses
    _mpe = _lazy_package("jaxmarl.environments.mpe", _root / "environments" / "mpe")
    sys.modules["jaxmarl.environments.mpe"] = _mpe
    _envs.mpe = _mpe
