"""PostgreSQL: install usage/sql/record_fast_v2.sql over v1 (same functions and signatures).

v2 writes both functions' answers as JSON text (as the API writes the engine's) instead of building
jsonb, formats times with one to_char, and joins the batch's balances instead of searching an array
for each event. Backwards: v1 again."""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).resolve().parent.parent / "sql"


def install(version: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            with schema_editor.connection.cursor() as cursor:
                cursor.execute((SQL / f"record_fast_{version}.sql").read_text())  # no parameters: '%' is modulo

    return run


class Migration(migrations.Migration):
    dependencies = [("usage", "0005_record_fast")]

    operations = [migrations.RunPython(install("v2"), install("v1"), elidable=False)]
