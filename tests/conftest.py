"""Root pytest configuration: registers the shared fixture modules."""

pytest_plugins = [
    "tests.fixtures.infra",
    "tests.fixtures.database",
    "tests.fixtures.kafka",
    "tests.fixtures.engine",
]
