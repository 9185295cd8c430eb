from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Case, ExpressionWrapper, F, IntegerField, Q, Value, When
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from plans.models import CreditField, Plan, Subscription


class CreditAccount(models.Model):
    """One per organization: the row every credit or allowance write locks first.

    `balance` caches the sum of the organization's lots' `remaining` (invariant 2, checked by
    audit_ledger). The `next_*` fields let the hot path skip looking for expired lots and holds
    until one can exist.
    """

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="credit_account")
    balance = CreditField(default=0)
    monthly_spend_cap = CreditField(null=True, blank=True, help_text=_("Credits per calendar month; empty = no cap"))
    spend_month = models.DateField(null=True, blank=True, help_text=_("First day (UTC) of the month spend counts"))
    spend_month_total = CreditField(default=0)
    next_lot_expiry = models.DateTimeField(null=True, blank=True)
    next_hold_expiry = models.DateTimeField(null=True, blank=True)
    # Auto top-up (billing/services/autotopup.py). On this row so that the usage hot path, which has
    # it locked already, sees the settings without another query. Written only under the row lock,
    # with update() of these columns (the credit book writes the others).
    auto_topup_enabled = models.BooleanField(default=False, help_text=_("Off until an owner turns it on"))
    auto_topup_min_balance = CreditField(default=0, help_text=_("Top up when the balance falls below this"))
    auto_topup_target_balance = CreditField(default=0, help_text=_("A top-up buys just enough to reach this"))
    auto_topup_monthly_cap_amount = models.PositiveIntegerField(
        null=True, blank=True, help_text=_("Most auto top-ups may charge per calendar month (UTC), in minor units")
    )
    auto_topup_currency = models.CharField(max_length=3, blank=True)
    auto_topup_failures = models.PositiveSmallIntegerField(default=0, help_text=_("Failed charges in a row"))
    auto_topup_last_charge_at = models.DateTimeField(
        null=True, blank=True, help_text=_("Last charge attempt (paid or not): the cool-down counts from it")
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="account_balance_nonnegative"),
            models.CheckConstraint(
                condition=Q(monthly_spend_cap__isnull=True) | Q(monthly_spend_cap__gte=0),
                name="account_cap_nonnegative",
            ),
            models.CheckConstraint(
                condition=Q(auto_topup_enabled=False)
                | Q(
                    auto_topup_min_balance__gte=0,
                    auto_topup_target_balance__gt=models.F("auto_topup_min_balance"),
                    auto_topup_monthly_cap_amount__gt=0,
                ),
                name="account_auto_topup_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"Credits of {self.organization}"


class CreditPack(models.Model):
    """A pack customers can buy."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100)
    credits = CreditField()
    price_amount = models.PositiveIntegerField(help_text=_("Minor units"))
    currency = models.CharField(max_length=3, default="usd")
    expires_after_days = models.PositiveIntegerField(null=True, blank=True, default=365)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "price_amount"]
        constraints = [models.CheckConstraint(condition=Q(credits__gt=0), name="pack_credits_positive")]

    def __str__(self) -> str:
        return self.name


class LotCategory(models.TextChoices):
    PROMOTIONAL = "promotional", _("Promotional")
    PAID = "paid", _("Paid")


class LotSource(models.TextChoices):
    GRANT = "grant", _("Grant")
    PURCHASE = "purchase", _("Purchase")
    AUTO_TOPUP = "auto_topup", _("Auto top-up")
    ADJUSTMENT = "adjustment", _("Adjustment")


class CreditLot(models.Model):
    """Credits granted together. Drawn in order: priority (lower first), soonest expiry,
    promotional before paid, oldest, id. `remaining` changes only through ledger entries."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="credit_lots")
    category = models.CharField(max_length=16, choices=LotCategory.choices)
    source = models.CharField(max_length=16, choices=LotSource.choices)
    priority = models.SmallIntegerField(default=100, help_text=_("Lower is drawn first"))
    granted = CreditField()
    remaining = CreditField()
    effective_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # External id this lot was granted for (a payment intent, a grant key): one grant per payment.
    external_ref = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - NULL: no ref, unique
    created_at = models.DateTimeField()
    # What the open-lot indexes are partial on, kept by the database. Not `remaining > 0` itself:
    # a column in an index predicate makes every draw a non-HOT update that writes every index.
    is_open = models.GeneratedField(
        expression=ExpressionWrapper(Q(remaining__gt=0), output_field=models.BooleanField()),
        output_field=models.BooleanField(),
        db_persist=True,
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(remaining__gte=0), name="lot_remaining_nonnegative"),
            models.CheckConstraint(condition=Q(remaining__lte=models.F("granted")), name="lot_remaining_le_granted"),
            models.CheckConstraint(condition=Q(granted__gt=0), name="lot_granted_positive"),
            models.UniqueConstraint(fields=["organization", "external_ref"], name="lot_unique_external_ref"),
        ]
        indexes = [
            models.Index(
                fields=["organization", "priority", "expires_at"],
                condition=Q(is_open=True),
                name="lot_org_open",
            ),
            models.Index(fields=["expires_at"], condition=Q(is_open=True), name="lot_expiring"),
        ]

    def __str__(self) -> str:
        return f"Lot #{self.pk}: {self.remaining}/{self.granted} ({self.category})"


# The draw order of ARCHITECTURE.md: priority, soonest expiry, promotional before paid, oldest, id
# (billing.services.book sorts loaded lots by the same key in Python).
DRAW_ORDER = (
    "priority",
    F("expires_at").asc(nulls_last=True),
    Case(When(category=LotCategory.PROMOTIONAL, then=Value(0)), default=Value(1), output_field=IntegerField()),
    "created_at",
    "id",
)


class EntryKind(models.TextChoices):
    GRANT = "grant", _("Grant")
    CONSUME = "consume", _("Consumption")
    HOLD = "hold", _("Reservation hold")
    RELEASE = "release", _("Reservation release")
    EXPIRE = "expire", _("Expiry")
    CLAWBACK = "clawback", _("Clawback")
    ADJUST = "adjust", _("Adjustment")


class LedgerEntry(models.Model):
    """Append-only: never updated or deleted. `amount` is signed (credit to the lot is positive).

    For every lot: granted + sum(amount of its non-grant entries) = remaining.
    """

    # Indexed by ledger_org_recent (organization first): every index is written on each draw.
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="ledger_entries", db_index=False
    )
    lot = models.ForeignKey(CreditLot, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(max_length=16, choices=EntryKind.choices)
    amount = CreditField()
    balance_after = CreditField(help_text=_("Organization balance after this entry"))
    # What caused it: "usage:<event id>", "reservation:<id>", "grant:<key>", "expiry".
    reference = models.CharField(max_length=120, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    created_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["organization", "-id"], name="ledger_org_recent"),
            models.Index(fields=["reference"], name="ledger_reference"),
            # Only admin grants and adjustments have an actor: usage entries add nothing to it.
            models.Index(fields=["actor"], condition=Q(actor__isnull=False), name="ledger_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} on lot #{self.lot_id}"


# Payments -------------------------------------------------------------------------------------


class StripeCustomer(models.Model):
    """An organization's customer in Stripe (created on first need) and its default card."""

    organization = models.OneToOneField(Organization, on_delete=models.CASCADE, related_name="stripe_customer")
    customer_id = models.CharField(max_length=255, unique=True)
    default_payment_method_id = models.CharField(max_length=255, blank=True)
    card_brand = models.CharField(max_length=32, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.customer_id} ({self.organization})"

    @property
    def has_card(self) -> bool:
        return bool(self.default_payment_method_id)


class PurchaseStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    REQUIRES_ACTION = "requires_action", _("Requires authentication")
    SUCCEEDED = "succeeded", _("Paid")
    FAILED = "failed", _("Failed")
    REFUNDED = "refunded", _("Refunded")


class PurchaseKind(models.TextChoices):
    PURCHASE = "purchase", _("Credit pack")
    AUTO_TOPUP = "auto_topup", _("Auto top-up")
    RENEWAL = "renewal", _("Plan renewal")
    PLAN_UPGRADE = "plan_upgrade", _("Plan upgrade")


# Kinds that pay for a plan period (no credits, no lot).
PLAN_KINDS = (PurchaseKind.RENEWAL, PurchaseKind.PLAN_UPGRADE)


class CreditPurchase(models.Model):
    """One attempt to pay for credits or for a plan period. Created before Stripe is called: its id
    is the idempotency key ("purchase:<id>"). Paid exactly once: the lot is granted in the
    transaction that marks it succeeded, with the payment intent id as the lot's external_ref
    (unique per organization). Renewals and plan upgrades grant no credits: they carry the
    subscription, the plan and the period they pay for (billing/services/renewals.py)."""

    OPEN_STATUSES = (PurchaseStatus.PENDING, PurchaseStatus.REQUIRES_ACTION)

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="credit_purchases")
    pack = models.ForeignKey(CreditPack, null=True, blank=True, on_delete=models.PROTECT, related_name="purchases")
    kind = models.CharField(max_length=16, choices=PurchaseKind.choices, default=PurchaseKind.PURCHASE)
    credits = CreditField()
    amount = models.PositiveIntegerField(help_text=_("Minor units"))
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING)
    payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    payment_method_id = models.CharField(max_length=255, blank=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=500, blank=True, help_text=_("Worded for the customer"))
    card_brand = models.CharField(max_length=32, blank=True)
    card_last4 = models.CharField(max_length=4, blank=True)
    lot = models.OneToOneField(CreditLot, null=True, blank=True, on_delete=models.PROTECT, related_name="purchase")
    subscription = models.ForeignKey(
        Subscription, null=True, blank=True, on_delete=models.PROTECT, related_name="charges"
    )
    plan = models.ForeignKey(Plan, null=True, blank=True, on_delete=models.PROTECT, related_name="charges")
    period_start = models.DateTimeField(null=True, blank=True, help_text=_("Start of the plan period paid for"))
    period_end = models.DateTimeField(null=True, blank=True, help_text=_("End of the plan period paid for"))
    # The Idempotency-Key of the API call that started it (unique per organization; NULL when none).
    request_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 - NULLs never clash
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(credits__gt=0) | Q(credits=0, kind__in=["renewal", "plan_upgrade"]),
                name="purchase_credits_positive",
            ),
            models.CheckConstraint(
                condition=~Q(status="succeeded")
                | Q(lot__isnull=False, paid_at__isnull=False)
                | Q(kind__in=["renewal", "plan_upgrade"], paid_at__isnull=False),
                name="purchase_paid_has_lot",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=["renewal", "plan_upgrade"])
                | Q(subscription__isnull=False, plan__isnull=False, period_start__isnull=False),
                name="purchase_plan_kinds_have_period",
            ),
            # One renewal per subscription period: a failed attempt leaves room for a retry.
            models.UniqueConstraint(
                fields=["subscription", "period_start"],
                condition=Q(kind="renewal", status__in=["pending", "requires_action", "succeeded", "refunded"]),
                name="purchase_one_renewal_per_period",
            ),
            # One plan payment (renewal or upgrade) in flight per organization.
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(kind__in=["renewal", "plan_upgrade"], status__in=["pending", "requires_action"]),
                name="purchase_one_plan_payment_in_flight",
            ),
            models.UniqueConstraint(fields=["organization", "request_key"], name="purchase_unique_request_key"),
            # One auto top-up in flight per organization (billing/services/autotopup.py).
            models.UniqueConstraint(
                fields=["organization"],
                condition=Q(kind="auto_topup", status__in=["pending", "requires_action"]),
                name="purchase_one_auto_topup_in_flight",
            ),
        ]
        indexes = [
            models.Index(fields=["organization", "-created_at"], name="purchase_org_recent"),
            models.Index(
                fields=["created_at"], condition=Q(status__in=["pending", "requires_action"]), name="purchase_open"
            ),
        ]

    def __str__(self) -> str:
        return f"Purchase #{self.pk} ({self.status})"

    @property
    def idempotency_key(self) -> str:
        return f"purchase:{self.pk}"

    @property
    def card_words(self) -> str:
        """ "visa ending in 4242" for emails and receipts."""
        if self.card_last4:
            return f"{self.card_brand or 'card'} ending in {self.card_last4}"
        return "card on file"


class BillingNoticeKind(models.TextChoices):
    TOPUP_SUCCEEDED = "topup_succeeded", _("Auto top-up charged")
    TOPUP_FAILED = "topup_failed", _("Auto top-up failed")
    TOPUP_DISABLED = "topup_disabled", _("Auto top-up turned off")
    PLAN_STARTED = "plan_started", _("Paid plan started")
    RENEWAL_SUCCEEDED = "renewal_succeeded", _("Plan renewed")
    RENEWAL_FAILED = "renewal_failed", _("Plan renewal failed")
    PLAN_DOWNGRADED = "plan_downgraded", _("Moved to the free plan")


class BillingNotice(models.Model):
    """An email to an organization's owners about money (a charge, a failure, a plan change).

    Written in the transaction that records what it tells (an outbox: no email for something rolled
    back, none lost in a crash), sent by `billing_notices_send`. Unique per (organization, dedupe_key),
    so an event reported twice (webhook and sweep) is told once. Billing keeps its own notices:
    usage.Notice is above billing in the import order.
    """

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="billing_notices")
    kind = models.CharField(max_length=32, choices=BillingNoticeKind.choices)
    dedupe_key = models.CharField(max_length=120)
    # In the site's language: what the admin reads, and the email of a row without `params`.
    subject = models.CharField(max_length=200)
    body = models.TextField()
    # What the kind's message says (billing/emails.py), written in each reader's language when sent.
    params = models.JSONField(default=dict, blank=True)
    purchase = models.ForeignKey(
        CreditPurchase, null=True, blank=True, on_delete=models.SET_NULL, related_name="notices"
    )
    created_at = models.DateTimeField()
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "dedupe_key"], name="billing_notice_unique"),
        ]
        indexes = [
            models.Index(fields=["created_at"], condition=Q(sent_at__isnull=True), name="billing_notice_unsent"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} for organization #{self.organization_id}"
