"""Imports point one way, usage -> billing -> plans -> accounts -> core (ARCHITECTURE.md): no app's code
imports an app above it, and no app's templates load a tag library of an app above it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.template import Engine

ORDER = ["core", "accounts", "plans", "billing", "usage"]  # each may use those before it
ROOT = Path(settings.BASE_DIR)


def above(app: str) -> set[str]:
    return set(ORDER[ORDER.index(app) + 1 :])


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


@pytest.mark.parametrize("app", ORDER)
def test_an_apps_code_imports_no_app_above_it(app):
    offending = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] in above(app))
        for path in sorted((ROOT / app).rglob("*.py"))
    }
    assert {path: modules for path, modules in offending.items() if modules} == {}


@pytest.mark.parametrize("app", ORDER)
def test_an_apps_templates_load_no_tag_library_of_an_app_above_it(app):
    libraries = Engine.get_default().libraries  # name -> module path
    offending: dict[str, list[str]] = {}
    for path in sorted((ROOT / "templates" / app).rglob("*.html")):
        for names in re.findall(r"{%\s*load\s+([^%]+?)\s*%}", path.read_text()):
            bad = [name for name in names.split() if libraries[name].split(".")[0] in above(app)]
            if bad:
                offending[str(path.relative_to(ROOT))] = bad
    assert offending == {}


def test_the_shared_libraries_are_where_the_layers_need_them():
    libraries = Engine.get_default().libraries
    assert libraries["formatting"] == "core.templatetags.formatting"
    assert libraries["billing_format"] == "billing.templatetags.billing_format"
