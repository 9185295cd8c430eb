"""Imports point one way, usage -> billing -> plans -> accounts -> core (docs: ARCHITECTURE.md): billing's
code imports nothing from usage, and billing's templates load no tag library of usage's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from django.conf import settings
from django.template import Engine

BILLING = Path(settings.BASE_DIR) / "billing"
BILLING_TEMPLATES = Path(settings.BASE_DIR) / "templates" / "billing"


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_billing_code_imports_nothing_from_usage():
    offending = {
        str(path.relative_to(BILLING)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "usage")
        for path in sorted(BILLING.rglob("*.py"))
    }
    assert {path: modules for path, modules in offending.items() if modules} == {}


def test_billing_templates_load_only_libraries_of_billing_core_and_django():
    libraries = Engine.get_default().libraries  # name -> module path
    loaded: dict[str, set[str]] = {}
    for path in sorted(BILLING_TEMPLATES.glob("*.html")):
        for names in re.findall(r"{%\s*load\s+([^%]+?)\s*%}", path.read_text()):
            for name in names.split():
                loaded.setdefault(name, set()).add(path.name)
    assert {name: libraries[name] for name in loaded if libraries[name].split(".")[0] == "usage"} == {}
    assert libraries["formatting"] == "core.templatetags.formatting"
    assert libraries["billing_format"] == "billing.templatetags.billing_format"
    assert loaded["billing_format"] == {"_auto_topup.html", "_buy_body.html", "plans.html"}
