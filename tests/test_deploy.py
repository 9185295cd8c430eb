"""Production settings pass Django's deployment checks; the development fallbacks do not."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_deploy_check(**overrides: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STRIPE_", "SECRET_KEY", "DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"))
    }
    env.update({"DJANGO_SETTINGS_MODULE": "config.settings", "ALLOWED_HOSTS": "example.com", "DEBUG": "0"})
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_production_settings_pass_check_deploy():
    # given production settings: a long random secret key, DEBUG off, a real host
    # when Django's deployment checks run, failing on any warning
    result = run_deploy_check(SECRET_KEY=secrets.token_urlsafe(64))

    # then nothing is reported
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_missing_secret_key_fails_check_deploy():
    # given production settings without SECRET_KEY (the development fallback key is used)
    # when the deployment checks run
    result = run_deploy_check()

    # then they fail on the insecure key, and on nothing else
    assert result.returncode == 1
    assert "security.W009" in result.stderr
    assert "System check identified 1 issue (0 silenced)." in result.stderr


def test_stripe_api_host_is_flagged_in_production():
    # given production settings that still point stripe-python at a local fake Stripe
    # when the deployment checks run
    result = run_deploy_check(SECRET_KEY=secrets.token_urlsafe(64), STRIPE_API_HOST="http://127.0.0.1:8420")

    # then dj-stripe's warning fails the check
    assert result.returncode == 1
    assert "djstripe.W002" in result.stderr
    assert "System check identified 1 issue (0 silenced)." in result.stderr
