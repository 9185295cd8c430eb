"""Card on file and credit purchases.

The order of a purchase (ARCHITECTURE.md, Payments):
1. `CreditPurchase` row committed first (its id is the Stripe idempotency key "purchase:<id>");
2. the PaymentIntent is created and confirmed off-session, outside any transaction or lock;
3. `purchase_settle` marks it paid and grants the lot in one transaction.

Every path that learns a payment's outcome (the synchronous answer, the webhook, the reconciliation
sweep) calls `purchase_settle`; whichever comes first grants, the others change nothing. The
purchase row is locked (`SELECT ... FOR UPDATE`) before the credit account (inside
credits_grant); no writer locks them the other way round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Q

from accounts.models import Organization, Role
from billing import stripe_gateway as gateway
from billing.models import (
    PLAN_KINDS,
    CreditLot,
    CreditPack,
    CreditPurchase,
    LedgerEntry,
    LotCategory,
    LotSource,
    PurchaseKind,
    PurchaseStatus,
    StripeCustomer,
)
from billing.services.book import credit_books_lock
from billing.services.grants import credits_grant
from core.errors import Conflict, DomainError, NotFound, Unprocessable
from core.idempotency import key_reused
from core.models import IdempotencyRecord
from core.money import CREDIT_PLACES, ZERO, round_credits

logger = logging.getLogger(__name__)

# A purchase whose payment intent we never learned (a crash between Stripe's answer and our write)
# is looked up by its metadata; if Stripe has none after this long, it never happened.
ABANDON_UNKNOWN_AFTER = timedelta(hours=1)
RECONCILE_AFTER = timedelta(minutes=5)
# A payment still waiting for 3-D Secure after this long is failed (its auto top-up, renewal or
# upgrade must not wait forever; with real Stripe an off-session charge fails at once instead).
UNCONFIRMED_EXPIRE_AFTER = timedelta(hours=24)

_SOURCE_BY_KIND = {PurchaseKind.PURCHASE: LotSource.PURCHASE, PurchaseKind.AUTO_TOPUP: LotSource.AUTO_TOPUP}


# Card on file ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardSetup:
    setup_intent_id: str
    client_secret: str
    customer_id: str


def stripe_customer_ensure(*, organization_id: int, now: datetime) -> StripeCustomer:
    """The organization's Stripe customer, created in Stripe on first need.

    Two concurrent first calls may both create a customer in Stripe; the database keeps one (the
    other is never used). The idempotency key makes a retried create return the same customer.
    """
    existing = StripeCustomer.objects.filter(organization_id=organization_id).first()
    if existing is not None:
        return existing
    org = Organization.objects.filter(pk=organization_id).first()
    if org is None:
        raise NotFound("There is no such organization.", code="organization_not_found")
    owner = org.memberships.filter(role=Role.OWNER).select_related("user").order_by("id").first()
    customer_id = gateway.customer_create(
        email=owner.user.email if owner else "",
        name=org.name,
        metadata={"organization_id": str(org.pk)},
        idempotency_key=f"customer:org:{org.pk}",
    )
    try:
        with transaction.atomic():
            return StripeCustomer.objects.create(
                organization_id=organization_id, customer_id=customer_id, created_at=now, updated_at=now
            )
    except IntegrityError:
        return StripeCustomer.objects.get(organization_id=organization_id)


def card_setup_start(*, organization_id: int, now: datetime) -> CardSetup:
    """A SetupIntent for the browser (Stripe.js `confirmCardSetup`); the customer is created if needed."""
    customer = stripe_customer_ensure(organization_id=organization_id, now=now)
    setup = gateway.setup_intent_create(customer=customer.customer_id)
    return CardSetup(setup_intent_id=setup.id, client_secret=setup.client_secret, customer_id=customer.customer_id)


def _card_owned(customer: StripeCustomer, payment_method_id: str) -> gateway.Card:
    """The card, attached to this customer (attaching it if it belongs to nobody yet)."""
    card, owner = gateway.payment_method_retrieve(payment_method=payment_method_id)
    if owner is None:
        return gateway.payment_method_attach(payment_method=payment_method_id, customer=customer.customer_id)
    if owner != customer.customer_id:
        raise NotFound("This card is not on file.", code="card_not_found")
    return card


def card_set_default(*, organization_id: int, payment_method_id: str, now: datetime) -> StripeCustomer:
    """Remember this card as the one purchases charge. A card refused at attach raises CardDeclinedError."""
    customer = stripe_customer_ensure(organization_id=organization_id, now=now)
    card = _card_owned(customer, payment_method_id)
    StripeCustomer.objects.filter(pk=customer.pk).update(
        default_payment_method_id=card.id, card_brand=card.brand, card_last4=card.last4, updated_at=now
    )
    customer.refresh_from_db()
    return customer


def card_remove(*, organization_id: int, payment_method_id: str, now: datetime) -> StripeCustomer:
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    if customer is None:
        raise NotFound("This card is not on file.", code="card_not_found")
    card, owner = gateway.payment_method_retrieve(payment_method=payment_method_id)
    if owner != customer.customer_id:
        raise NotFound("This card is not on file.", code="card_not_found")
    gateway.payment_method_detach(payment_method=card.id)
    StripeCustomer.objects.filter(pk=customer.pk, default_payment_method_id=card.id).update(
        default_payment_method_id="", card_brand="", card_last4="", updated_at=now
    )
    customer.refresh_from_db()
    return customer


# Purchases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurchaseResult:
    purchase: CreditPurchase
    # For requires_action: what Stripe.js needs to run 3-D Secure in the browser.
    client_secret: str | None = None
    # True when a request key had already started this purchase: nothing was charged again.
    replayed: bool = False


def purchase_start(
    *,
    organization_id: int,
    pack_key: str,
    now: datetime,
    actor_id: int | None = None,
    request_key: str | None = None,
    currency: str | None = None,
) -> PurchaseResult:
    """Buy a credit pack with the card on file.

    Succeeded: the lot is granted before this returns. Requires action: the client secret is
    returned, and the webhook (or the sweep) grants. Declined: the purchase is failed with the
    card's reason, no credits. Stripe unreachable: PaymentProviderError, the purchase stays pending
    and the sweep settles it.

    `request_key` (an API call's Idempotency-Key, unique per organization): a second call with the
    same key charges nothing and returns that purchase as it is now (a key reused for another pack
    is refused with 422).

    `currency` (the dashboard passes the organization's billing currency): a pack sold in another
    currency is refused with 422 before anything is recorded or charged.
    """
    if request_key is not None:
        replay = _purchase_for_request(organization_id, request_key, pack_key)
        if replay is not None:
            return replay
    pack = CreditPack.objects.filter(key=pack_key, is_active=True).first()
    if pack is None:
        raise NotFound(f"There is no credit pack {pack_key!r}.", code="pack_not_found")
    if currency is not None and pack.currency.lower() != currency.lower():
        raise Unprocessable(
            "This credit pack is not sold in your organization's currency.", code="pack_currency_mismatch"
        )
    customer = StripeCustomer.objects.filter(organization_id=organization_id).first()
    if customer is None or not customer.has_card:
        raise Conflict("Add a card before buying credits.", code="card_required")
    try:
        with transaction.atomic():
            purchase = CreditPurchase.objects.create(
                organization_id=organization_id,
                pack=pack,
                kind=PurchaseKind.PURCHASE,
                credits=pack.credits,
                amount=pack.price_amount,
                currency=pack.currency,
                payment_method_id=customer.default_payment_method_id,
                card_brand=customer.card_brand,
                card_last4=customer.card_last4,
                actor_id=actor_id,
                request_key=request_key,
                created_at=now,
                updated_at=now,
            )
    except IntegrityError:
        # The same request key, at the same moment: the first call charges, this one reports it.
        replay = _purchase_for_request(organization_id, request_key, pack_key) if request_key else None
        if replay is None:
            raise
        return replay
    return purchase_charge(purchase=purchase, customer_id=customer.customer_id, now=now)


def _purchase_for_request(organization_id: int, request_key: str, pack_key: str) -> PurchaseResult | None:
    purchase = (
        CreditPurchase.objects.select_related("pack")
        .filter(organization_id=organization_id, request_key=request_key)
        .first()
    )
    if purchase is None:
        return None
    if purchase.kind != PurchaseKind.PURCHASE or purchase.pack is None or purchase.pack.key != pack_key:
        raise key_reused()
    secret = None
    if purchase.status == PurchaseStatus.REQUIRES_ACTION and purchase.payment_intent_id:
        secret = gateway.payment_intent_retrieve(payment_intent=purchase.payment_intent_id).client_secret
    return PurchaseResult(purchase=purchase, client_secret=secret, replayed=True)


def purchase_charge(*, purchase: CreditPurchase, customer_id: str, now: datetime) -> PurchaseResult:
    """Charge a committed purchase off-session and settle what Stripe answered.

    The caller must not be inside a transaction: the purchase row has to be committed before Stripe
    is called (its id is the idempotency key), and no lock may be held across the network call.
    """
    try:
        intent = gateway.payment_intent_create_and_confirm_off_session(
            amount=purchase.amount,
            currency=purchase.currency,
            customer=customer_id,
            payment_method=purchase.payment_method_id,
            idempotency_key=purchase.idempotency_key,
            metadata={
                "purchase_id": str(purchase.pk),
                "organization_id": str(purchase.organization_id),
                "kind": purchase.kind,
            },
        )
    except gateway.CardDeclinedError as exc:
        failed = purchase_fail(
            purchase_id=purchase.pk,
            code=exc.code,
            message=exc.message,
            payment_intent_id=exc.payment_intent_id,
            now=now,
        )
        return PurchaseResult(purchase=failed)
    except gateway.PaymentRequestError as exc:
        failed = purchase_fail(purchase_id=purchase.pk, code=exc.code, message=exc.message, now=now)
        return PurchaseResult(purchase=failed)
    settled = purchase_settle(intent=intent, now=now)
    assert settled is not None  # the intent carries our purchase id
    secret = intent.client_secret if settled.status == PurchaseStatus.REQUIRES_ACTION else None
    return PurchaseResult(purchase=settled, client_secret=secret)


def _purchase_for(intent: gateway.Intent) -> CreditPurchase | None:
    """The purchase this intent pays for, locked: by intent id, else by the purchase id in its metadata."""
    purchase = CreditPurchase.objects.select_for_update().filter(payment_intent_id=intent.id).first()
    if purchase is not None:
        return purchase
    purchase_id = intent.metadata.get("purchase_id", "")
    org_id = intent.metadata.get("organization_id", "")
    if not (purchase_id.isdigit() and org_id.isdigit()):
        return None
    return (
        CreditPurchase.objects.select_for_update()
        .filter(Q(payment_intent_id__isnull=True) | Q(payment_intent_id=intent.id))
        .filter(pk=int(purchase_id), organization_id=int(org_id))
        .first()
    )


@transaction.atomic
def purchase_settle(*, intent: gateway.Intent, now: datetime) -> CreditPurchase | None:
    """Bring a purchase in line with its PaymentIntent; returns None if the intent is not ours.

    Idempotent: a succeeded intent grants once (the purchase row lock, then the lot's unique
    external_ref); a failure never overrides a success; a success after a failure still grants
    (the customer may have paid with another card in the browser).
    """
    purchase = _purchase_for(intent)
    if purchase is None:
        return None
    before = purchase.status
    if purchase.payment_intent_id is None:
        purchase.payment_intent_id = intent.id
    if intent.card_last4:
        purchase.card_brand, purchase.card_last4 = intent.card_brand, intent.card_last4
    if intent.status == "succeeded":
        if purchase.status in (PurchaseStatus.SUCCEEDED, PurchaseStatus.REFUNDED):
            return purchase
        if (intent.amount, intent.currency.lower()) != (purchase.amount, purchase.currency.lower()):
            # Never grant for a payment that is not what we asked for; the admin sees it.
            logger.error(
                "payment intent %s: %s %s, purchase %s expects %s %s",
                intent.id,
                intent.amount,
                intent.currency,
                purchase.pk,
                purchase.amount,
                purchase.currency,
            )
            purchase.failure_code = "amount_mismatch"
            purchase.failure_message = "The amount paid does not match the purchase."
            purchase.updated_at = now
            purchase.save()
            return purchase
        if purchase.kind not in PLAN_KINDS:  # a plan period grants no credits
            expires_at = None
            if purchase.pack is not None and purchase.pack.expires_after_days:
                expires_at = now + timedelta(days=purchase.pack.expires_after_days)
            purchase.lot = credits_grant(
                organization_id=purchase.organization_id,
                credits=purchase.credits,
                now=now,
                category=LotCategory.PAID,
                source=_SOURCE_BY_KIND.get(PurchaseKind(purchase.kind), LotSource.PURCHASE),
                reason=_grant_reason(purchase),
                actor_id=purchase.actor_id,
                expires_at=expires_at,
                external_ref=intent.id,
            )
        purchase.status = PurchaseStatus.SUCCEEDED
        purchase.paid_at = now
        purchase.failure_code = purchase.failure_message = ""
    elif intent.status == "requires_action":
        if purchase.status == PurchaseStatus.PENDING:
            purchase.status = PurchaseStatus.REQUIRES_ACTION
    elif intent.status in ("requires_payment_method", "canceled") and purchase.status in CreditPurchase.OPEN_STATUSES:
        purchase.failure_code, purchase.failure_message = _failure_reason(intent, purchase)
        purchase.status = PurchaseStatus.FAILED
    purchase.updated_at = now
    purchase.save()
    _outcome_record(purchase, before, now)
    return purchase


def _outcome_record(purchase: CreditPurchase, before: str, now: datetime) -> None:
    """What else a purchase's kind does when it has just succeeded or failed (same transaction,
    purchase row locked). Each transition happens once, under that lock, so this runs once."""
    if purchase.status == before or purchase.status not in (PurchaseStatus.SUCCEEDED, PurchaseStatus.FAILED):
        return
    # Imported here: these modules charge through this one.
    if purchase.kind == PurchaseKind.AUTO_TOPUP:
        from billing.services.autotopup import auto_topup_outcome_record

        auto_topup_outcome_record(purchase=purchase, now=now)
    elif purchase.kind in PLAN_KINDS:
        from billing.services.renewals import plan_payment_outcome_record

        plan_payment_outcome_record(purchase=purchase, now=now)


def _failure_reason(intent: gateway.Intent, purchase: CreditPurchase) -> tuple[str, str]:
    """A failed intent's code and the sentence a customer reads."""
    if intent.error_code or intent.error_message:
        return intent.error_code or "card_declined", gateway.decline_message(intent.error_code)
    if intent.status == "canceled":
        return "canceled", "The payment was canceled."
    if purchase.status == PurchaseStatus.REQUIRES_ACTION:
        return "authentication_failed", "Your bank did not confirm this payment."
    return "card_declined", gateway.DEFAULT_DECLINE_MESSAGE


def _grant_reason(purchase: CreditPurchase) -> str:
    # An auto top-up is priced at (and expires like) a pack, but is not that pack.
    is_pack = purchase.pack is not None and purchase.kind == PurchaseKind.PURCHASE
    name = purchase.pack.name if is_pack and purchase.pack is not None else purchase.get_kind_display()
    return f"{name} (purchase #{purchase.pk})"


@transaction.atomic
def purchase_fail(
    *, purchase_id: int, code: str, message: str, now: datetime, payment_intent_id: str | None = None
) -> CreditPurchase:
    """Mark an open purchase failed with a reason worded for the customer (a paid one stays paid)."""
    purchase = CreditPurchase.objects.select_for_update().get(pk=purchase_id)
    before = purchase.status
    if payment_intent_id and purchase.payment_intent_id is None:
        purchase.payment_intent_id = payment_intent_id
    if purchase.status in CreditPurchase.OPEN_STATUSES:
        purchase.status = PurchaseStatus.FAILED
        purchase.failure_code = code[:64]
        purchase.failure_message = message[:500]
    purchase.updated_at = now
    purchase.save()
    _outcome_record(purchase, before, now)
    return purchase


# Reconciliation --------------------------------------------------------------------------------


def purchases_reconcile(*, now: datetime, older_than: timedelta = RECONCILE_AFTER, limit: int = 200) -> int:
    """Settle open purchases older than `older_than` from Stripe's state; returns how many were read.

    Safe to run at any time and any number of times, beside webhooks and purchase_start: every
    outcome goes through purchase_settle. Each purchase read is stamped (updated_at), so a long
    requires_action one does not starve the others.
    """
    cutoff = now - older_than
    due = list(
        CreditPurchase.objects.filter(
            status__in=CreditPurchase.OPEN_STATUSES, created_at__lte=cutoff, updated_at__lte=cutoff
        ).order_by("updated_at", "id")[:limit]
    )
    recent: dict[tuple[str, str], gateway.Intent] | None = None
    read = 0
    for purchase in due:
        try:
            if purchase.payment_intent_id:
                intent: gateway.Intent | None = gateway.payment_intent_retrieve(
                    payment_intent=purchase.payment_intent_id
                )
            else:
                if recent is None:
                    recent = {
                        (i.metadata.get("organization_id", ""), i.metadata.get("purchase_id", "")): i
                        for i in gateway.payment_intents_recent()
                    }
                intent = recent.get((str(purchase.organization_id), str(purchase.pk)))
        except DomainError as exc:
            logger.warning("reconcile purchase %s: %s", purchase.pk, exc.message)
            continue
        read += 1
        if intent is not None:
            settled = purchase_settle(intent=intent, now=now)
            if (
                settled is not None
                and settled.status == PurchaseStatus.REQUIRES_ACTION
                and purchase.created_at <= now - UNCONFIRMED_EXPIRE_AFTER
            ):
                # Not authenticated in time: the purchase fails, so that what waits on it (auto top-up,
                # a renewal's retries) goes on. Authenticated later after all, it still grants.
                purchase_fail(
                    purchase_id=purchase.pk,
                    code="authentication_not_completed",
                    message="Your bank asked you to confirm this payment, and it was not confirmed. "
                    "You were not charged.",
                    now=now,
                )
            elif settled is not None and settled.status in CreditPurchase.OPEN_STATUSES:
                CreditPurchase.objects.filter(pk=purchase.pk).update(updated_at=now)
        elif purchase.created_at <= now - ABANDON_UNKNOWN_AFTER:
            purchase_fail(
                purchase_id=purchase.pk,
                code="payment_not_found",
                message="The payment did not go through. You were not charged.",
                now=now,
            )
        else:
            CreditPurchase.objects.filter(pk=purchase.pk).update(updated_at=now)
    return read


# Refunds ---------------------------------------------------------------------------------------


@transaction.atomic
def purchase_refund_record(
    *, payment_intent_id: str, refund_id: str, refund_amount: int, fully_refunded: bool, now: datetime
) -> Decimal | None:
    """Take back the unused part of a refunded purchase's lot, pro rata to the money refunded.

    Keyed by the refund id (reference "refund:<id>"): the admin's own call and the charge.refunded
    webhook may both report it, once counts. Returns the credits taken back (None: not ours).
    """
    purchase = CreditPurchase.objects.select_for_update().filter(payment_intent_id=payment_intent_id).first()
    if purchase is None:
        return None
    # The purchase's refund log (also for renewals and upgrades, which have no lot): purchase_refund
    # counts it to give each refund attempt its own Stripe idempotency key.
    IdempotencyRecord.objects.get_or_create(
        scope=_refund_log_scope(purchase.pk),
        key=refund_id,
        defaults={"request_hash": "", "http_status": 200, "response": {"amount": refund_amount}},
    )
    if fully_refunded and purchase.status == PurchaseStatus.SUCCEEDED:
        # Before the lot check: a refunded renewal or upgrade (no lot) shows refunded too.
        purchase.status = PurchaseStatus.REFUNDED
        purchase.updated_at = now
        purchase.save(update_fields=["status", "updated_at"])
    if purchase.lot_id is None:
        return None
    org_id = purchase.organization_id
    reference = f"refund:{refund_id}"
    taken = ZERO
    if not LedgerEntry.objects.filter(organization_id=org_id, reference=reference).exists():
        book = credit_books_lock([org_id], now=now)[org_id]
        lot = CreditLot.objects.get(pk=purchase.lot_id)
        share = round_credits(
            purchase.credits * Decimal(min(refund_amount, purchase.amount)) / Decimal(purchase.amount)
        )
        taken = book.claw_back(lot, share, reference=reference, reason=f"Refund {refund_id} of purchase #{purchase.pk}")
        book.flush()
    return taken


def purchase_unused_refund_amount(*, purchase: CreditPurchase, now: datetime) -> int:
    """The money (minor units) for the credits of this purchase's lot that are still unused: pro rata,
    rounded DOWN to a whole minor unit (cents, whole yen), so a refund never pays back more than
    what is unused. 0 when nothing can be refunded (not paid, a plan period, a used-up lot, or a lot
    expired at `now`: expired credits are not refunded, even before the expiry sweep has taken them)."""
    lot = purchase.lot
    if (
        purchase.status != PurchaseStatus.SUCCEEDED
        or purchase.kind in PLAN_KINDS
        or lot is None
        or (lot.expires_at is not None and lot.expires_at <= now)
        or purchase.payment_intent_id is None
        or purchase.credits <= 0
    ):
        return 0
    scale = 10**CREDIT_PLACES  # exact integer arithmetic on the stored scale
    unused = int(lot.remaining * scale)
    return min(purchase.amount * unused // int(purchase.credits * scale), purchase.amount)


def purchase_refund_unused(*, purchase_id: int, now: datetime) -> tuple[int, Decimal]:
    """Refund the unused part of a paid pack or top-up through Stripe and take those credits back.
    Returns (minor units refunded, credits taken back). Outside any transaction (network)."""
    purchase = CreditPurchase.objects.select_related("lot").filter(pk=purchase_id).first()
    if purchase is None:
        raise NotFound("There is no such purchase.", code="purchase_not_found")
    amount = purchase_unused_refund_amount(purchase=purchase, now=now)
    if amount <= 0:
        raise Conflict("Nothing of this purchase is left to refund.", code="purchase_not_refundable")
    return amount, purchase_refund(purchase_id=purchase.pk, amount=amount, now=now)


def _refund_log_scope(purchase_id: int) -> str:
    return f"refund:purchase:{purchase_id}"


def _refunds_recorded(purchase: CreditPurchase) -> int:
    """How many refunds of this purchase were recorded (ours, or seen in charge.refunded)."""
    return IdempotencyRecord.objects.filter(scope=_refund_log_scope(purchase.pk)).count()


def purchase_refund(*, purchase_id: int, amount: int | None = None, now: datetime) -> Decimal:
    """Refund a paid purchase through Stripe (all of it by default, in minor units) and take back
    the unused credits. Called outside any transaction (network)."""
    purchase = CreditPurchase.objects.filter(pk=purchase_id).first()
    if purchase is None or purchase.payment_intent_id is None or purchase.status != PurchaseStatus.SUCCEEDED:
        raise Conflict("Only a paid purchase can be refunded.", code="purchase_not_refundable")
    amount = purchase.amount if amount is None else amount
    if not 0 < amount <= purchase.amount:
        raise DomainError("The refund must be more than zero and at most the amount paid.", code="invalid_amount")
    # One key per refund attempt: a retried call (nothing recorded yet) resends the same key, while a
    # second deliberate refund of the same amount comes after the first was recorded, so it is new.
    done = _refunds_recorded(purchase)
    refund = gateway.refund_create(
        payment_intent=purchase.payment_intent_id,
        amount=amount,
        idempotency_key=f"refund:purchase:{purchase.pk}:{done}:{amount}",
        metadata={"purchase_id": str(purchase.pk)},
    )
    taken = purchase_refund_record(
        payment_intent_id=purchase.payment_intent_id,
        refund_id=refund.id,
        refund_amount=refund.amount,
        fully_refunded=refund.amount >= purchase.amount,
        now=now,
    )
    return taken or ZERO


def purchase_refresh(
    *, organization_id: int, purchase_id: int, now: datetime, kind: PurchaseKind = PurchaseKind.PURCHASE
) -> CreditPurchase:
    """Settle an open purchase of this organization (of `kind`: a credit pack by default, or a plan
    upgrade) from its PaymentIntent as Stripe has it now (after the browser completed 3-D Secure).
    A settled one is returned unchanged. Outside any transaction (network)."""
    purchase = CreditPurchase.objects.filter(pk=purchase_id, organization_id=organization_id).first()
    if purchase is None or purchase.kind != kind:
        raise NotFound("There is no such purchase.", code="purchase_not_found")
    if purchase.status not in CreditPurchase.OPEN_STATUSES or not purchase.payment_intent_id:
        return purchase
    intent = gateway.payment_intent_retrieve(payment_intent=purchase.payment_intent_id)
    settled = purchase_settle(intent=intent, now=now)
    return settled if settled is not None else purchase
