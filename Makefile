# The two commands: `make run` and `make test`. See README.md.
.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help venv run test lint bench audit clean

help:
	@echo "make run     venv, migrate, demo data, then web + Celery worker + beat + localstripe (Ctrl-C stops)"
	@echo "make test    venv, then pytest (PostgreSQL if it answers, else SQLite; CI=true: fresh DB + migration check)"
	@echo "make lint    ruff check, ruff format --check, mypy"
	@echo "make bench   the load benchmark in bench/ (PostgreSQL)"

venv:
	@bash bin/venv

run:
	@bash bin/run

test:
	@bash bin/test $(ARGS)

lint: venv
	@status=0; \
	echo "==> ruff check"; $(BIN)/ruff check . || status=1; \
	echo "==> ruff format --check"; $(BIN)/ruff format --check . || status=1; \
	echo "==> mypy"; $(BIN)/mypy || status=1; \
	exit $$status

bench: venv
	@if [ ! -e bench/run ]; then echo "bench/run does not exist yet" >&2; exit 1; fi
	@if [ -x bench/run ]; then bench/run; \
	elif head -n 1 bench/run | grep -q python; then $(BIN)/python bench/run; \
	else bash bench/run; fi

audit: venv
	@$(BIN)/python manage.py audit_ledger

clean:
	rm -rf var/staticfiles var/celery .pytest_cache .mypy_cache .ruff_cache
