from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from accounts.models import Scope, ServiceToken
from accounts.services import service_token_create


class Command(BaseCommand):
    help = "Create a service token for an internal service and print it once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")
        parser.add_argument("--scope", choices=Scope.values, default=Scope.USAGE)

    def handle(self, *args: Any, **options: Any) -> None:
        if ServiceToken.objects.filter(name=options["name"]).exists():
            raise CommandError(f"A service token named {options['name']!r} exists already; pick another name.")
        token, secret = service_token_create(name=options["name"], scope=options["scope"])
        self.stderr.write(f"Service token {token.name!r} ({token.scope}). It is shown once; store it now:")
        self.stdout.write(secret)
