"""Test matrix: the fast tier against each supported Django release, the whole suite against the newest.

The fast tier runs the in-process tests on the in-memory stores (a minute
per release); the whole suite adds real Redis, gunicorn, uvicorn, the fault
tier and the browsers. Run with ``make test`` (which reuses environments),
``nox -s "fast(django='4.2')"`` or ``nox -s tests``. Extra arguments after
``--`` go to pytest.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
DJANGO_VERSIONS = ["4.2", "5.2"]
NEWEST = DJANGO_VERSIONS[-1]


def _pytest(session: nox.Session, django: str, tier: str, env: dict[str, str]) -> None:
    # One resolver run, so the Django pin and the project's own ranges agree.
    session.install(".[test]", f"django~={django}.0")
    session.run("python", "-m", "django", "--version")
    artifacts = ROOT / "test-artifacts" / f"{tier}-django-{django}"
    artifacts.mkdir(parents=True, exist_ok=True)
    session.run(
        "pytest",
        f"--junitxml={artifacts / 'junit.xml'}",
        *session.posargs,
        env={"TUSBRIDGE_TEST_ARTIFACTS": str(artifacts), **env},
    )


@nox.session
@nox.parametrize("django", DJANGO_VERSIONS)
def fast(session: nox.Session, django: str) -> None:
    """The fast tier on one Django: in-process tests on the in-memory stores."""
    _pytest(session, django, "fast", {"TUSBRIDGE_TEST_STORES": "memory"})


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite on the newest Django: real Redis, gunicorn, uvicorn, faults, browsers."""
    _pytest(session, NEWEST, "all", {})
