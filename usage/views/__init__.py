"""Dashboard pages about usage, one module per page: sign up, overview (with its live partial),
usage (charts, event log and CSV), team.

usage/urls.py imports the modules, not their functions: each module is named after its page, and
re-exporting the page functions here would hide the modules of the same name.
"""
