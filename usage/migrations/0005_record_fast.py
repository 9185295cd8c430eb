"""PostgreSQL: install usage_record_fast and usage_record_fast_batch (usage/sql/record_fast_v1.sql;
usage.services.fast), and leave room for in-place updates on the tables they update."""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).resolve().parent.parent / "sql" / "record_fast_v1.sql"


# Rows the hot path updates in place keep free room on their page, so an update can stay on it
# (a HOT update: no index is written). Windows are updated on every included use.
FILLFACTOR = {"usage_allowancewindow": 50, "billing_creditaccount": 70, "billing_creditlot": 70}


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table, percent in FILLFACTOR.items():
            schema_editor.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(SQL.read_text())  # no parameters: '%' is the modulo operator


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for table in FILLFACTOR:
            schema_editor.execute(f"ALTER TABLE {table} RESET (fillfactor)")
        schema_editor.execute(
            "DROP FUNCTION IF EXISTS usage_record_fast_batch(jsonb, timestamptz, jsonb, numeric, numeric);"
            " DROP FUNCTION IF EXISTS usage_record_fast(bigint, bigint, text, numeric, numeric, text, text, jsonb,"
            " bigint, timestamptz, timestamptz, jsonb, numeric, numeric);"
            " DROP FUNCTION IF EXISTS flex_iso(timestamptz);"
        )


class Migration(migrations.Migration):
    dependencies = [("usage", "0004_fewer_indexes"), ("billing", "0007_billing_notice_params"), ("plans", "0002_subscription_renewals")]

    operations = [migrations.RunPython(install, uninstall, elidable=False)]
