from billing.services.book import CreditBook, credit_books_lock
from billing.services.grants import credits_adjust, credits_grant, lots_expire_due, spend_cap_set
from billing.services.provision import organization_provision, subscription_change

__all__ = [
    "CreditBook",
    "credit_books_lock",
    "credits_adjust",
    "credits_grant",
    "lots_expire_due",
    "organization_provision",
    "spend_cap_set",
    "subscription_change",
]
