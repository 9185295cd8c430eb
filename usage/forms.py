"""Forms of the usage pages: the event log's filters."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django import forms
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from usage.models import Decision

EARLIEST = date(2000, 1, 1)
LATEST = date(2999, 12, 31)


class EventFilterForm(forms.Form):
    """GET filters of the event log and its CSV export. Dates are days in the viewer's time zone."""

    meter = forms.ChoiceField(label=_("Meter"), required=False)
    decision = forms.ChoiceField(
        label=_("Decision"),
        required=False,
        choices=[("", _("All")), *Decision.choices],
    )
    date_from = forms.DateField(label=_("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(label=_("To"), required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, meters: list[tuple[str, str]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fields["meter"].choices = [("", _("All meters")), *meters]  # type: ignore[attr-defined]

    def _in_range(self, name: str) -> date | None:
        value: date | None = self.cleaned_data.get(name)
        if value is not None and not (EARLIEST <= value <= LATEST):
            raise forms.ValidationError(_("Enter a date between 2000 and 2999."))
        return value

    def clean_date_from(self) -> date | None:
        return self._in_range("date_from")

    def clean_date_to(self) -> date | None:
        return self._in_range("date_to")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", _("The end date is before the start date."))
        return data

    def bounds(self) -> tuple[datetime | None, datetime | None]:
        """[start of date_from, start of the day after date_to) as aware datetimes in the active zone."""
        zone = timezone.get_current_timezone()
        start, end = self.cleaned_data.get("date_from"), self.cleaned_data.get("date_to")
        lower = datetime.combine(start, time.min, tzinfo=zone) if start else None
        upper = datetime.combine(end + timedelta(days=1), time.min, tzinfo=zone) if end else None
        return lower, upper
