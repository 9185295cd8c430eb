"""The billing pages of the dashboard, one module per page: `credits` (and its `auto_topup`
section's POST; `_credits_page` renders the page for both), `buy` (the buy dialog and its actions),
`plans`, `cards`; `_common` holds what they share.
Views are thin: services write, selectors read. billing/urls.py imports the views from the modules.
"""

# What other apps import from here: usage's overview hosts the buy dialog.
from billing.views._common import stripe_js_url
from billing.views.buy import SESSION_LIVE_NOTE, buy_dialog_context

__all__ = ["SESSION_LIVE_NOTE", "buy_dialog_context", "stripe_js_url"]
