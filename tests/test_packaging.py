"""The conda environment (environment.yml) and the package (pyproject.toml) ask for the same
packages with the same floors: the dependencies plus the notebooks and dev extras, which is what
the environment is for (running the course and its tests)."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_IN_ENV = ("notebooks", "dev")  # "bench" (its own venv) and "browser" are not in it
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> the name pip and pyproject use
CONDA_ONLY = {"python", "pip"}


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="Python 3.10 without tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floors(requirements) -> dict[str, SpecifierSet]:
    """name -> its version specifiers, for requirement strings such as ``"torch>=2.8"``."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        out[canonicalize_name(req.name)] = req.specifier
    return out


def _conda_spec(text: str) -> tuple[str, SpecifierSet]:
    """A conda match spec (``pytorch>=2.8``, ``python=3.11``) as a pip name and specifiers;
    conda's ``=3.11`` means ``3.11.*``."""
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", text.strip())
    assert m, f"environment.yml: cannot read {text!r}"
    name, spec = m.group(1), m.group(2).replace(" ", "")
    if re.fullmatch(r"=[0-9.]+", spec):
        spec = f"={spec}.*"
    return canonicalize_name(CONDA_NAMES.get(name, name)), SpecifierSet(spec)


def _environment() -> tuple[dict[str, SpecifierSet], list[str]]:
    """environment.yml's conda dependencies (by pip name) and its pip lines."""
    conda, pip, section = {}, [], None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.split(":")[0]
            continue
        if section != "dependencies":
            continue
        item = line.strip()[2:] if line.strip().startswith("- ") else None
        if line.startswith("      - "):  # under "- pip:"
            pip.append(item)
        elif item == "pip:":
            continue
        elif item is not None:
            name, spec = _conda_spec(item)
            conda[name] = spec
    return conda, pip


def test_environment_asks_for_what_pyproject_asks_for():
    project = _pyproject()["project"]
    wanted = _floors(project["dependencies"])
    for extra in EXTRAS_IN_ENV:
        for name, spec in _floors(project["optional-dependencies"][extra]).items():
            assert wanted.get(name, spec) == spec, f"pyproject asks for {name} twice: " \
                f"{wanted[name]} and {spec} (in [{extra}])"
            wanted[name] = spec
    conda, pip = _environment()
    have = {k: v for k, v in conda.items() if k not in CONDA_ONLY}
    assert sorted(set(wanted) - set(have)) == [], "in pyproject.toml, not in environment.yml"
    assert sorted(set(have) - set(wanted)) == [], "in environment.yml, not in pyproject.toml"
    differ = {name: (str(have[name]), str(spec)) for name, spec in wanted.items()
              if have[name] != spec}
    assert differ == {}, "floors differ, (environment.yml, pyproject.toml): " + repr(differ)
    assert pip == ["-e ."], "the environment installs the package itself from the checkout"


def test_environment_python_is_supported():
    conda, _ = _environment()
    requires = SpecifierSet(_pyproject()["project"]["requires-python"])
    pinned = conda["python"]
    (spec,) = list(pinned)  # e.g. ==3.11.*
    assert Version(spec.version.rstrip(".*")) in requires, (str(pinned), str(requires))


def test_the_conda_reader():
    assert _conda_spec("pytorch>=2.8") == ("torch", SpecifierSet(">=2.8"))
    assert _conda_spec("python=3.11") == ("python", SpecifierSet("==3.11.*"))
    assert _conda_spec("numpy") == ("numpy", SpecifierSet(""))
