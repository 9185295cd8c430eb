"""The team page: members and their roles, invitations, role changes and removals.

The invitation lives here, in the top app, because inviting someone new needs billing's
provisioning (a personal organization with its subscription and credit account), and accounts
may not import billing.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import PermissionDenied
from django.core.mail import send_mail
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import translation
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.forms import InviteForm, RoleForm
from accounts.models import Membership, Role, User
from accounts.services import membership_change_role, membership_remove
from accounts.views import OrgContext, org_page, render_org
from billing.services.provision import member_invite
from core.clock import now as clock_now
from core.errors import DomainError, NotFound


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
    # In the language they chose; someone who has not chosen yet gets the inviter's.
    with translation.override(user.language or translation.get_language()):
        subject, body = _invite_text(request, ctx, user, new_user=new_user)
    send_mail(subject, body, None, [user.email])


def _invite_text(request: HttpRequest, ctx: OrgContext, user: User, *, new_user: bool) -> tuple[str, str]:
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
    return subject, body


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
