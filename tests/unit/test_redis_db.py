"""The integration tests' own Redis databases are apart from the session's services (database 0)."""

from tests.factories import redis_db


def test_a_test_database_is_the_one_asked_for_even_when_the_url_names_another() -> None:
    # the session's URL ends in /0; redis-py's from_url(url, db=n) would keep 0, where the services' keys are
    for url in ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379", "redis://:secret@127.0.0.1:6379/3"):
        client = redis_db(url, 14)
        assert client.connection_pool.connection_kwargs["db"] == 14
        assert client.connection_pool.connection_kwargs.get("password") == ("secret" if "secret" in url else None)
