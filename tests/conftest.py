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
