"""The benchmark's baseline: the same auth and request handling as the usage API, then one INSERT.

`make bench` compares every hot endpoint with this view, so it does what any usage call must do
(Bearer auth, JSON body, Idempotency-Key header) and nothing else. Routed only with BENCH_ENDPOINTS=1.
"""

from __future__ import annotations

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import idempotency_key
from core.models import BenchmarkRow
from core.parsing import require_object


class BenchBaselineView(APIView):
    def post(self, request: Request) -> Response:
        key = idempotency_key(request)
        require_object(request.data)
        row = BenchmarkRow.objects.create(note=key)
        return Response({"id": row.pk}, status=201)
