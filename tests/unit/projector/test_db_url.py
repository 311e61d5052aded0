"""sqlalchemy_url: every libpq spelling of a PostgreSQL URL becomes a psycopg 3 SQLAlchemy URL."""

from __future__ import annotations

import pytest

from services.projector.db import sqlalchemy_url


def test_plain_uri_gets_the_psycopg_driver() -> None:
    url = sqlalchemy_url("postgresql://app:s3cret@db.example:6543/switchyard?sslmode=require")
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        "s3cret",
        "db.example",
        6543,
        "switchyard",
    )
    assert url.query == {"sslmode": "require"}


def test_postgres_scheme_alias() -> None:
    assert sqlalchemy_url("postgres://u@h/d").drivername == "postgresql+psycopg"


def test_unix_socket_with_empty_password() -> None:
    url = sqlalchemy_url("postgresql://postgres:@/postgres?host=/root/.local/state/switchyard/postgres")
    assert url.host is None and url.password is None and url.database == "postgres"
    assert url.query == {"host": "/root/.local/state/switchyard/postgres"}
    rendered = url.render_as_string(hide_password=False)
    assert rendered.startswith("postgresql+psycopg://postgres@/postgres?host=")


def test_libpq_key_value_string() -> None:
    url = sqlalchemy_url("user=postgres host=/tmp/pg dbname=sy_test_1 port=5433")
    assert (url.username, url.database) == ("postgres", "sy_test_1")
    assert url.query == {"host": "/tmp/pg", "port": "5433"}


def test_percent_encoded_password_survives() -> None:
    url = sqlalchemy_url("postgresql://u:p%40ss%2Fw@localhost/d")
    assert url.password == "p@ss/w"
    assert url.host == "localhost" and url.port is None


def test_multiple_hosts_go_to_the_query() -> None:
    url = sqlalchemy_url("postgresql://u@h1:5432,h2:5433/d")
    assert url.query["host"] == "h1,h2" and url.query["port"] == "5432,5433"


def test_sqlalchemy_urls_keep_everything_but_the_driver() -> None:
    url = sqlalchemy_url("postgresql+psycopg2://u:p@h:1/d")
    assert url.drivername == "postgresql+psycopg" and (url.host, url.port, url.database) == ("h", 1, "d")


@pytest.mark.parametrize("bad", ["", "   ", "mysql://u@h/d"])
def test_rejects_what_is_not_postgresql(bad: str) -> None:
    with pytest.raises(ValueError):
        sqlalchemy_url(bad)
