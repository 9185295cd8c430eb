"""The usage page: daily charts from rollups, the event log (filtered, paged by cursor), and its CSV."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.translation import gettext as _

from accounts.views import OrgContext, org_page, render_org
from core.clock import now as clock_now
from plans.selectors import catalogue
from usage.charts import daily_chart
from usage.forms import EventFilterForm
from usage.rollups import daily_usage_series, rollup_updated_at, zone_of
from usage.selectors import events_for
from usage.templatetags.dashboard import number, unit_word, window_label

EVENTS_PER_PAGE = 50


@dataclass(slots=True)
class WindowLine:
    label: str
    used: Decimal
    limit: Decimal
    remaining: Decimal
    resets_at: datetime | None


@dataclass(slots=True)
class EventView:
    id: int
    created_at: datetime
    meter_name: str
    meter_key: str
    unit: str
    kind: str
    kind_label: str
    decision: str
    quantity: Decimal
    from_allowance: Decimal
    credits_charged: Decimal
    idempotency_key: str
    windows: list[WindowLine]
    lots: list[tuple[str, Decimal]]
    code: str
    message: str


def _event_view(event: Any) -> EventView:
    cat = catalogue()
    body = event.response if isinstance(event.response, dict) else {}
    windows = []
    for w in body.get("windows", []) or []:
        try:
            allowance = cat.allowances_by_id.get(int(w.get("allowance") or 0))
            label = (
                window_label(str(w.get("kind", "")), allowance.window_seconds if allowance else None)
                if allowance
                else str(w.get("window", ""))
            )
            windows.append(
                WindowLine(
                    label=label,
                    used=Decimal(str(w.get("used", "0"))),
                    limit=Decimal(str(w.get("limit", "0"))),
                    remaining=Decimal(str(w.get("remaining", "0"))),
                    resets_at=datetime.fromisoformat(w["resets_at"]) if w.get("resets_at") else None,
                )
            )
        except (ValueError, TypeError, ArithmeticError):
            continue
    lots = []
    for lot in body.get("lots", []) or []:
        try:
            lots.append((str(lot.get("lot", "")), Decimal(str(lot.get("credits", "0")))))
        except (ValueError, TypeError, ArithmeticError):
            continue
    error = body.get("error") or {}
    meter = event.meter
    return EventView(
        id=event.pk,
        created_at=event.created_at,
        meter_name=meter.name,
        meter_key=meter.key,
        unit=unit_word(meter.unit, meter.unit_plural, event.quantity),
        kind=event.kind,
        kind_label=event.get_kind_display(),
        decision=event.decision,
        quantity=event.quantity,
        from_allowance=event.from_allowance,
        credits_charged=event.credits_charged,
        idempotency_key=event.idempotency_key,
        windows=windows,
        lots=lots,
        code=str(error.get("code", "")),
        message=str(error.get("message", "")),
    )


def _meter_choices() -> list[tuple[str, str]]:
    meters = sorted(catalogue().meters_by_id.values(), key=lambda m: (m.product_name, m.name))
    return [(m.key, f"{m.product_name} · {m.name}") for m in meters]


def _filtered_events(ctx: OrgContext, form: EventFilterForm) -> Any:
    events = events_for(organization_id=ctx.organization.pk)
    data = form.cleaned_data
    if data.get("meter"):
        meter = catalogue().meters_by_key.get(data["meter"])
        events = events.filter(meter_id=meter.id if meter else -1)
    if data.get("decision"):
        events = events.filter(decision=data["decision"])
    lower, upper = form.bounds()
    if lower:
        events = events.filter(created_at__gte=lower)
    if upper:
        events = events.filter(created_at__lt=upper)
    return events


def _cursor(value: str) -> tuple[datetime, int] | None:
    """ "<microseconds since epoch>.<id>" -> (created_at, id); None for anything else."""
    stamp, _sep, ident = value.partition(".")
    if not (stamp.isdigit() and ident.isdigit()) or len(stamp) > 20 or len(ident) > 19:
        return None
    try:
        return datetime.fromtimestamp(int(stamp) / 1_000_000, tz=UTC), int(ident)
    except (OverflowError, OSError, ValueError):
        return None


def _cursor_of(event: Any) -> str:
    return f"{int(event.created_at.timestamp() * 1_000_000)}.{event.pk}"


@org_page()
def usage_page(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    now = clock_now()
    cat = catalogue()
    meters = sorted(cat.meters_by_id.values(), key=lambda m: (m.product_name, m.name))
    zone = zone_of(ctx.organization.timezone)  # days in the organization's zone
    today = now.astimezone(zone).date()
    series = daily_usage_series(
        organization_id=ctx.organization.pk, meter_ids=[m.id for m in meters], last_day=today, zone=zone
    )
    charts = [
        {
            "meter": m,
            "rows": series[m.id],
            "chart": daily_chart(series[m.id]),
            "unit": unit_word(m.unit, m.unit_plural, Decimal(2)),
            "first": series[m.id][0].day,
            "last": series[m.id][-1].day,
        }
        for m in meters
    ]
    form = EventFilterForm(request.GET or None, meters=_meter_choices())
    events: list[EventView] = []
    older = ""
    if form.is_bound and not form.is_valid():
        valid = False
    else:
        valid = True
        if not form.is_bound:
            form = EventFilterForm({}, meters=_meter_choices())
            form.is_valid()
        qs = _filtered_events(ctx, form)
        cursor = _cursor(request.GET.get("before", ""))
        if cursor:
            qs = qs.filter(Q(created_at__lt=cursor[0]) | Q(created_at=cursor[0], id__lt=cursor[1]))
        page = list(qs[: EVENTS_PER_PAGE + 1])
        if len(page) > EVENTS_PER_PAGE:
            page = page[:EVENTS_PER_PAGE]
            older = _cursor_of(page[-1])
        events = [_event_view(e) for e in page]
    query = request.GET.copy()
    query.pop("before", None)
    return render_org(
        request,
        ctx,
        "usage/usage.html",
        {
            "charts": charts,
            "form": form,
            "filters_valid": valid,
            "events": events,
            "older": older,
            "filter_query": query.urlencode(),
            "is_paged": "before" in request.GET,
            "rollup_at": rollup_updated_at(),
            "day_zone": ctx.organization.timezone,
        },
        active="usage",
    )


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_safe(value: str) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; a leading quote keeps them text."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


CSV_HEADER = [
    "id",
    "created_at",
    "occurred_at",
    "meter",
    "kind",
    "decision",
    "quantity",
    "from_allowance",
    "credits_charged",
    "idempotency_key",
    "error_code",
]


def _csv_rows(events: Any) -> Iterator[list[str]]:
    yield CSV_HEADER
    for e in events.iterator(chunk_size=2000):
        error = (e.response or {}).get("error") or {} if isinstance(e.response, dict) else {}
        yield [
            str(e.pk),
            e.created_at.astimezone(UTC).isoformat(),
            e.occurred_at.astimezone(UTC).isoformat(),
            e.meter.key,
            e.kind,
            e.decision,
            number(e.quantity).replace(",", ""),
            number(e.from_allowance).replace(",", ""),
            number(e.credits_charged).replace(",", ""),
            _csv_safe(e.idempotency_key),
            str(error.get("code", "")),
        ]


@org_page()
def events_csv(request: HttpRequest, ctx: OrgContext) -> HttpResponseBase:
    form = EventFilterForm(request.GET, meters=_meter_choices())
    if not form.is_valid():
        return HttpResponseBadRequest(
            _("The filters are not valid: %(errors)s")
            % {"errors": "; ".join(str(m) for ms in form.errors.values() for m in ms)},
            content_type="text/plain; charset=utf-8",
        )
    writer = csv.writer(_Echo())
    rows = (writer.writerow(row) for row in _csv_rows(_filtered_events(ctx, form)))
    stamp = clock_now().strftime("%Y%m%d-%H%M")
    response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="usage-events-{ctx.organization.pk}-{stamp}.csv"'
    return response
