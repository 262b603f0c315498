"""Shared fixtures live in tests/fixtures/, one plugin module per real part we start."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.prometheus",
    "tests.fixtures.cluster",
    "tests.fixtures.backends",
    "tests.fixtures.slack",
    "tests.fixtures.prefect",
    "tests.fixtures.prefect_server",
]

# Property tests judge behaviour, not speed: a wall-clock deadline per example fails them on
# a loaded 2-core runner (speed goals live in bench/).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("phasegate", deadline=None)
_hypothesis_settings.load_profile("phasegate")
