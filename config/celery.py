import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("flexcredits")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The one beat schedule. Every job re-derives its work from the database, so a missed run is
# caught up by the next one and a doubled run changes nothing.
app.conf.beat_schedule = {
    "expire-credit-lots": {"task": "billing.tasks.lots_expire_due", "schedule": 60.0},
    "release-expired-reservations": {"task": "usage.tasks.reservations_release_expired", "schedule": 60.0},
    "close-finished-windows": {"task": "usage.tasks.windows_close_finished", "schedule": 60.0},
    "send-pending-notices": {"task": "usage.tasks.notices_send_pending", "schedule": 60.0},
    "rollup-daily-usage": {"task": "usage.tasks.daily_usage_rollup", "schedule": 60.0},
    "reconcile-payments": {"task": "billing.tasks.purchases_reconcile", "schedule": 120.0},
    "renew-paid-subscriptions": {"task": "billing.tasks.renewals_run_due", "schedule": 300.0},
    "auto-topup-sweep": {"task": "billing.tasks.auto_topup_sweep", "schedule": 120.0},
    "send-billing-notices": {"task": "billing.tasks.billing_notices_send", "schedule": 60.0},
}
