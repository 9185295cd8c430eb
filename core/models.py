from django.db import models


class IdempotencyRecord(models.Model):
    """The stored answer of a mutating admin call, so a retried request gets the same answer.

    (Usage events and reservations keep their own keys on their rows: the hot path writes one row.)
    """

    scope = models.CharField(max_length=64, help_text="The operation, e.g. organizations.create")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=32)
    http_status = models.PositiveSmallIntegerField()
    response = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="idempotency_unique_scope_key")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"


class BenchmarkRow(models.Model):
    """One row per call of the benchmark's baseline endpoint (bench/, routed only with BENCH_ENDPOINTS=1)."""

    note = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.note
