"""The README's commands are the ones CI runs, and the house rules hold."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_commands_install_and_test():
    first, second = readme_commands()
    assert first.endswith("&& papernotes reproduce")
    assert second.endswith("&& pytest")


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install, test = readme_commands()[1].rsplit(" && ", 1)
    assert install in ci.splitlines()
    assert test in ci.splitlines()
    assert "ruff check ." in ci


FIELDS = ("llm", "video", "geometry")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_shared_layers_never_import_a_field_and_no_field_imports_another():
    """The README's Architecture: core, nn and metrics import no field; a field imports no other field."""
    package = ROOT / "src" / "papernotes"
    offenders = []
    for path in package.rglob("*.py"):
        layer = path.relative_to(package).parts[0]
        if layer in ("cli", "__main__.py"):  # the command line sits on top of every field
            continue
        forbidden = [f for f in FIELDS if f != layer]
        for name in _imports(path):
            if re.match(rf"papernotes\.({'|'.join(forbidden)})\b", name):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []


def test_library_code_does_not_print():
    """Library code logs; the command line writes through ``papernotes.cli.common.echo``."""
    offenders = []
    for path in (ROOT / "src" / "papernotes").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
