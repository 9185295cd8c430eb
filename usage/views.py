"""Dashboard pages about usage: sign up, overview (with its live partial), usage and event log, team.

Sign up and the team invitation live here, in the top app, because a new person needs billing's
provisioning (a personal organization with its subscription and credit account), and accounts
may not import billing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied
from django.core.mail import send_mail
from django.db import IntegrityError
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.forms import InviteForm, RoleForm, SignupForm
from accounts.models import Membership, Role, User
from accounts.services import membership_change_role, membership_remove
from accounts.views import SESSION_ORG, OrgContext, org_page, render_org
from billing.selectors import packs_active
from billing.services.provision import member_invite, user_signup
from billing.views import SESSION_LIVE_NOTE, buy_dialog_context
from core.clock import now as clock_now
from core.errors import DomainError, NotFound
from plans.periods import month_start
from plans.selectors import catalogue
from usage.charts import daily_chart
from usage.forms import EventFilterForm
from usage.messages import limit_reached_message, spend_cap_message
from usage.rollups import daily_usage_series, rollup_updated_at, zone_of
from usage.selectors import entitlements, events_for
from usage.templatetags.dashboard import duration, number, percent, unit_word, window_label

WARN_PERCENT = 80
EVENTS_PER_PAGE = 50

# Sign up ----------------------------------------------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user, org = user_signup(
                email=form.cleaned_data["email"],
                password=form.cleaned_data["password"],
                name=form.cleaned_data["name"],
                now=clock_now(),
            )
        except IntegrityError:  # the same address signed up a moment ago
            form.add_error("email", _("An account with this email address already exists. Log in instead."))
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session[SESSION_ORG] = org.pk
            messages.success(request, _("Welcome! This is your personal organization."))
            return redirect("org_overview", org_id=org.pk)
    return render(request, "accounts/signup.html", {"form": form}, status=400 if form.errors else 200)


# Overview ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class WindowView:
    html_id: str
    label: str
    limit: Decimal
    used: Decimal
    remaining: Decimal
    percent: int
    resets_at: datetime | None
    resets_in: str
    state: str  # ok | warn | full | none (nothing included)
    low: Decimal
    high: Decimal
    unit: str
    unusable: bool = False  # another window of the meter blocks it


@dataclass(slots=True)
class MeterView:
    key: str
    name: str
    product: str
    credits_per_unit: Decimal
    credits_allowed: bool
    windows: list[WindowView]
    status: str  # ok | warn | credits | blocked | excluded | payg
    unit_one: str
    blocked_until: datetime | None = None
    blocked_in: str = ""
    blocking_label: str = ""
    message: str = ""
    spend_cap: bool = False


@dataclass(slots=True)
class Live:
    plan: dict[str, Any] | None
    balance: Decimal
    available: Decimal
    meters: list[MeterView] = field(default_factory=list)
    now: datetime | None = None

    @property
    def blocked(self) -> list[MeterView]:
        return [m for m in self.meters if m.status == "blocked"]

    @property
    def plan_is_free(self) -> bool:
        return bool(self.plan and self.plan["is_free"])


def _next_month(now: datetime) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def live_state(ctx: OrgContext, *, now: datetime) -> Live:
    """What the overview shows, from usage.selectors.entitlements (no event is scanned)."""
    data = entitlements(organization_id=ctx.organization.pk, now=now)
    if data is None:
        return Live(plan=None, balance=Decimal(0), available=Decimal(0), now=now)
    cat = catalogue()
    credits = data["credits"]
    available = Decimal(credits["available"])
    cap = Decimal(credits["monthly_spend_cap"]) if credits["monthly_spend_cap"] is not None else None
    cap_room = None if cap is None else max(cap - Decimal(credits["spent_this_month"]), Decimal(0))
    live = Live(plan=data["plan"], balance=Decimal(credits["balance"]), available=available, now=now)
    plan_name = data["plan"]["name"] if data["plan"] else ""
    for m in data["meters"]:
        info = cat.meters_by_key.get(m["meter"])
        singular = info.unit if info else m["unit"]
        plural = info.unit_plural if info else m["unit"]
        cpu = Decimal(m["credits_per_unit"])
        windows = []
        for w in m["windows"]:
            allowance = cat.allowances_by_id.get(w["allowance"])
            limit, used = Decimal(w["limit"]), Decimal(w["used"])
            resets_at = datetime.fromisoformat(w["resets_at"]) if w["resets_at"] else None
            pct = percent(used, limit)
            state = "none" if limit <= 0 else "full" if used >= limit else "warn" if pct >= WARN_PERCENT else "ok"
            windows.append(
                WindowView(
                    html_id=f"meter-{m['meter'].replace('.', '-')}-{w['allowance']}",
                    label=window_label(w["kind"], allowance.window_seconds if allowance else None),
                    limit=limit,
                    used=used,
                    remaining=Decimal(w["remaining"]),
                    percent=pct,
                    resets_at=resets_at,
                    resets_in=duration(resets_at - now) if resets_at else "",
                    state=state,
                    low=limit * (WARN_PERCENT - Decimal("0.5")) / 100,
                    high=limit * 95 / 100,
                    unit=unit_word(singular, plural, limit),
                )
            )
        view = MeterView(
            key=m["meter"],
            name=m["name"],
            product=info.product_name if info else "",
            credits_per_unit=cpu,
            credits_allowed=m["credits_allowed"],
            windows=windows,
            status="ok",
            unit_one=unit_word(singular, plural, Decimal(1)),
        )
        credits_cover = cpu == 0 or available >= cpu
        cap_blocks = cap_room is not None and cpu > 0 and cap_room < cpu
        can_pay = m["credits_allowed"] and credits_cover and not cap_blocks
        included = bool(windows) and min(w.limit for w in windows) > 0
        exhausted = [w for w in windows if w.state == "full"]
        if not included:
            view.status = "payg" if can_pay or m["credits_allowed"] else "excluded"
        elif exhausted and can_pay:
            view.status = "credits"
        elif exhausted:
            view.status = "blocked"
            ends = [w.resets_at for w in exhausted if w.resets_at]
            view.blocked_until = max(ends) if ends else None
            view.blocked_in = duration(view.blocked_until - now) if view.blocked_until else ""
            view.blocking_label = ", ".join(w.label for w in exhausted)
            for w in windows:
                w.unusable = w.state != "full"
            if m["credits_allowed"] and credits_cover and cap_blocks and cap is not None:
                view.spend_cap = True
                view.message = spend_cap_message(cap=number(cap), role=ctx.role, resets_at=_next_month(now))
            else:
                view.message = limit_reached_message(
                    meter_name=m["name"],
                    plan_name=plan_name,
                    plan_is_free=live.plan_is_free,
                    role=ctx.role,
                    resets_at=None,
                    credits_blocked=not m["credits_allowed"],
                )
        elif any(w.state == "warn" for w in windows):
            view.status = "warn"
        live.meters.append(view)
    return live


def _live_context(ctx: OrgContext, live: Live) -> dict[str, Any]:
    owners = []
    if not ctx.can_manage and live.blocked:
        owners = list(
            Membership.objects.filter(organization=ctx.organization, role=Role.OWNER)
            .select_related("user")
            .order_by("id")
            .values_list("user__email", flat=True)[:3]
        )
    return {"live": live, "owners": owners, "packs": list(packs_active())}


@org_page()
def overview(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    live = live_state(ctx, now=clock_now())
    context = {**_live_context(ctx, live), **(buy_dialog_context(ctx.organization.pk) if ctx.can_manage else {})}
    return render_org(request, ctx, "usage/overview.html", context, active="overview")


@org_page()
def overview_live(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    """The overview's meters, banner and balance: polled by htmx every 30 s."""
    live = live_state(ctx, now=clock_now())
    # After a purchase from the buy dialog: "1,000 credits added" in the live status region, once.
    added = request.session.pop(SESSION_LIVE_NOTE, None)
    context = {**_live_context(ctx, live), "oob": True, "added": added}
    return render_org(request, ctx, "usage/_live.html", context, active="overview")


# Usage page: charts from rollups, and the event log -------------------------------------------------


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


# Team -------------------------------------------------------------------------------------------


def _team_page(
    request: HttpRequest, ctx: OrgContext, *, invite: InviteForm | None = None, status: int = 200
) -> HttpResponse:
    members = list(
        Membership.objects.filter(organization=ctx.organization).select_related("user").order_by("created_at", "id")
    )
    owners = sum(1 for m in members if m.role == Role.OWNER)
    rows = []
    for m in members:
        manageable = ctx.can_manage and (ctx.role == Role.OWNER or m.role != Role.OWNER)
        last_owner = m.role == Role.OWNER and owners == 1
        rows.append(
            {
                "membership": m,
                "is_me": m.user_id == request.user.pk,
                "manageable": manageable and not last_owner,
                "last_owner": last_owner,
                "form": RoleForm(initial={"role": m.role}, actor_role=ctx.role, prefix=f"m{m.pk}"),
            }
        )
    return render_org(
        request,
        ctx,
        "usage/team.html",
        {
            "rows": rows,
            "invite": invite or InviteForm(actor_role=ctx.role),
        },
        active="team",
        status=status,
    )


@org_page()
def team(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    return _team_page(request, ctx)


def _invite_mail(request: HttpRequest, ctx: OrgContext, user: User, *, new_user: bool) -> None:
    inviter = request.user
    if new_user or not user.has_usable_password():
        link = request.build_absolute_uri(
            reverse(
                "password_reset_confirm",
                kwargs={
                    "uidb64": urlsafe_base64_encode(force_bytes(user.pk)),
                    "token": default_token_generator.make_token(user),
                },
            )
        )
        action = _("Choose a password to get started: %(link)s") % {"link": link}
    else:
        action = _("Log in to see it: %(link)s") % {"link": request.build_absolute_uri(reverse("login"))}
    subject = _("%(inviter)s invited you to %(org)s") % {
        "inviter": getattr(inviter, "email", ""),
        "org": ctx.organization.name,
    }
    body = "\n\n".join(
        [
            _("%(inviter)s added you to the organization “%(org)s” as %(role)s.")
            % {
                "inviter": getattr(inviter, "email", ""),
                "org": ctx.organization.name,
                "role": Role(Membership.objects.get(organization=ctx.organization, user=user).role).label,
            },
            action,
        ]
    )
    send_mail(subject, body, None, [user.email])


@require_POST
@org_page(manage=True)
def team_invite(request: HttpRequest, ctx: OrgContext) -> HttpResponse:
    form = InviteForm(request.POST, actor_role=ctx.role)
    if not form.is_valid():
        return _team_page(request, ctx, invite=form, status=400)
    email, role = form.cleaned_data["email"], form.cleaned_data["role"]
    try:
        user, new_user = member_invite(organization=ctx.organization, email=email, role=role, now=clock_now())
    except DomainError:
        form.add_error("email", _("%(email)s is already a member.") % {"email": email})
        return _team_page(request, ctx, invite=form, status=400)
    _invite_mail(request, ctx, user, new_user=new_user)
    messages.success(request, _("%(email)s is now a member. We sent them an email.") % {"email": email})
    return redirect("org_team", org_id=ctx.organization.pk)


@require_POST
@org_page(manage=True)
def team_role(request: HttpRequest, ctx: OrgContext, membership_id: int) -> HttpResponse:
    form = RoleForm(request.POST, actor_role=ctx.role, prefix=f"m{membership_id}")
    if not form.is_valid():
        messages.error(request, _("Choose one of the roles offered."))
        return redirect("org_team", org_id=ctx.organization.pk)
    try:
        target = membership_change_role(
            organization=ctx.organization,
            membership_id=membership_id,
            role=form.cleaned_data["role"],
            actor_role=ctx.role,
        )
    except NotFound:
        raise Http404 from None
    except DomainError as exc:
        if exc.status == 403:
            raise PermissionDenied(exc.message) from None
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            _("%(email)s is now %(role)s.") % {"email": target.user.email, "role": Role(target.role).label},
        )
    return redirect("org_team", org_id=ctx.organization.pk)


@require_POST
@org_page(manage=True)
def team_remove(request: HttpRequest, ctx: OrgContext, membership_id: int) -> HttpResponse:
    try:
        target = membership_remove(organization=ctx.organization, membership_id=membership_id, actor_role=ctx.role)
    except NotFound:
        raise Http404 from None
    except DomainError as exc:
        if exc.status == 403:
            raise PermissionDenied(exc.message) from None
        messages.error(request, exc.message)
        return redirect("org_team", org_id=ctx.organization.pk)
    messages.success(request, _("%(email)s was removed from the organization.") % {"email": target.user.email})
    if target.user_id == request.user.pk:
        return redirect("home")
    return redirect("org_team", org_id=ctx.organization.pk)
