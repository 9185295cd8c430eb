from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Organization
from usage.audit import ledger_audit


class Command(BaseCommand):
    help = (
        "Check the credit ledger (ARCHITECTURE.md invariants 1-3) for every organization: lots and windows "
        "within range, each lot equal to the sum of its entries, balances equal to the sum of lots, one effect "
        "per idempotency key and external ref, reservations held in the ledger. Exits non-zero on any break."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--organization", type=int, metavar="ID", help="Check only this organization.")

    def handle(self, *args: Any, **options: Any) -> None:
        organization_id = options.get("organization")
        if organization_id is not None and not Organization.objects.filter(pk=organization_id).exists():
            raise CommandError(f"There is no organization {organization_id}.")
        report = ledger_audit(organization_id=organization_id)
        for line in report.lines():
            self.stdout.write(line)
        if not report.ok:
            raise CommandError(f"ledger BROKEN: {len(report.problems)} of {report.organizations_checked} organizations")
        self.stdout.write(f"ledger OK: {report.organizations_checked} organizations")
