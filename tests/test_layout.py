"""The folder tree is the architecture: production stages never import development-only parts.

Imports are read from the source (every `import` and `from ... import`, also inside functions),
so a lazily imported stand-in is caught as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES = Path(__file__).resolve().parents[1] / "services"
STAGES = ("collector", "featurizer", "scorer", "trainer")
# Packages a stage never imports: development-only parts, and for the stages whose images must
# stay small, TensorFlow.
FORBIDDEN = {
    "collector": ("headbits.devtools", "headbits.traffic", "tensorflow"),
    "featurizer": ("headbits.devtools", "headbits.traffic", "tensorflow"),
    "scorer": ("headbits.devtools", "headbits.traffic"),
    "trainer": ("headbits.devtools",),
    "common": ("headbits.devtools", "headbits.traffic", "tensorflow"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_level_imports(path: Path) -> set[str]:
    """The modules a file imports when it is itself imported (its top-level statements)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_of(folder: str) -> list[Path]:
    return sorted((SERVICES / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_production_code_does_not_import_development_parts(folder: str) -> None:
    offending = {
        f"{path.relative_to(SERVICES)} imports {name}"
        for path in modules_of(folder)
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[folder])
    }
    assert not offending, sorted(offending)


def test_every_stage_folder_is_checked() -> None:
    folders = {p.name for p in SERVICES.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert set(STAGES) <= set(FORBIDDEN)
    assert folders - set(FORBIDDEN) == {"devtools", "traffic"}, "a new folder needs its rules"


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from headbits.devtools.harness import Topics\n")
    assert "headbits.devtools.harness" in imported_modules(module)


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    """The wheel (and so every image) lists its packages in pyproject.toml: a new package folder
    missing there works in the editable install and is absent everywhere else."""
    import tomllib

    listed = set(tomllib.loads((SERVICES.parent / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    tree = {"headbits" + "".join(f".{part}" for part in init.parent.relative_to(SERVICES).parts)
            for init in SERVICES.rglob("__init__.py")}
    assert tree == listed, f"missing: {sorted(tree - listed)}, stale: {sorted(listed - tree)}"



# The optional-dependency extra whose image runs each stage (pyproject.toml, Dockerfile).
STAGE_EXTRAS = {"collector": "collector", "featurizer": "featurizer", "scorer": "scorer",
                "trainer": "trainer"}


def distributions_of(extra: str) -> set[str]:
    """Normalised names of every distribution `pip install headbits[extra]` brings, transitively."""
    import re
    from importlib import metadata

    def name(requirement: str) -> str:
        return re.split(r"[ ;\[<>=!~(]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    wanted = [f"headbits[{extra}]"]
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        dist, extras = name(requirement), set(re.findall(r"\[([^\]]*)\]", requirement)[:1])
        extras = {e.strip() for group in extras for e in group.split(",")}
        key = f"{dist}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            marker = line.split(";", 1)[1] if ";" in line else ""
            chosen = re.findall(r'extra\s*==\s*"([^"]+)"', marker)
            if chosen and not set(chosen) & extras:
                continue
            if "python_version" in marker or "sys_platform" in marker:
                continue
            wanted.append(line.split(";", 1)[0])
    return {key.split("[", 1)[0] for key in seen}


@pytest.mark.parametrize("stage", sorted(STAGE_EXTRAS))
def test_every_library_a_stage_imports_is_in_its_images_extra(stage: str) -> None:
    """A stage's image installs only its extra: an import outside it fails there, not here."""
    import sys
    from importlib import metadata

    providers = metadata.packages_distributions()
    installed = distributions_of(STAGE_EXTRAS[stage])
    missing = set()
    # Shared modules import a stage's libraries only inside the functions that stage calls.
    imports = [(path, imported_modules(path)) for path in modules_of(stage)]
    imports += [(path, module_level_imports(path)) for path in modules_of("common")]
    for path, names in imports:
        for name in names:
            top = name.split(".", 1)[0]
            if top in sys.stdlib_module_names or top in ("headbits", "broker"):
                continue
            dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
            if dists and not dists & installed:
                missing.add(f"{path.relative_to(SERVICES)}: {top} ({', '.join(sorted(dists))})")
    assert not missing, sorted(missing)
