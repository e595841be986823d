"""Test matrix: the suite against each supported Django release.

Run with ``make test`` (which reuses environments) or ``nox -s "tests(django='4.2')"``.
Extra arguments after ``--`` go to pytest.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
DJANGO_VERSIONS = ["4.2", "5.2"]


@nox.session
@nox.parametrize("django", DJANGO_VERSIONS)
def tests(session: nox.Session, django: str) -> None:
    """Install the project with its test extras and the given Django, then run pytest."""
    # One resolver run, so the Django pin and the project's own ranges agree.
    session.install(".[test]", f"django~={django}.0")
    session.run("python", "-m", "django", "--version")
    artifacts = ROOT / "test-artifacts" / f"django-{django}"
    artifacts.mkdir(parents=True, exist_ok=True)
    session.run(
        "pytest",
        f"--junitxml={artifacts / 'junit.xml'}",
        *session.posargs,
        env={"TUSBRIDGE_TEST_ARTIFACTS": str(artifacts)},
    )
