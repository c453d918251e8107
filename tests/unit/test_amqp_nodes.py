"""JIT_AMQP_URL names one node or the nodes of a cluster (URLs separated by commas)."""

from __future__ import annotations

import pytest

from shared.amqp.connection import connection_parameters, rotated
from shared.logs import hide_password
from shared.settings import Settings, SettingsError, check_amqp_url, node_urls
from shared.trust import broker_user, plaintext_warnings

ONE = "amqp://guest:guest@localhost:5672/%2F"
THREE = "amqp://jit:pw@10.0.0.1:5672/prod, amqp://jit:pw@10.0.0.2:5673/prod,amqp://jit:pw@10.0.0.3/prod"


def test_a_single_url_is_one_node_and_unchanged() -> None:
    assert node_urls(ONE) == [ONE]
    assert check_amqp_url(ONE) == ONE
    [params] = connection_parameters(ONE, name="t")
    assert (params.host, params.port, params.virtual_host) == ("localhost", 5672, "/")
    assert Settings.from_environment({"JIT_AMQP_URL": ONE}).amqp_url == ONE


def test_several_urls_are_the_nodes_in_their_order() -> None:
    assert Settings.from_environment({"JIT_AMQP_URL": THREE}).amqp_url == THREE
    params = connection_parameters(THREE, name="jit test")
    assert [(p.host, p.port) for p in params] == [("10.0.0.1", 5672), ("10.0.0.2", 5673), ("10.0.0.3", 5672)]
    assert {p.virtual_host for p in params} == {"prod"}
    assert all(p.heartbeat == 30 and p.client_properties["connection_name"].startswith("jit test ") for p in params)


def test_a_reconnect_begins_with_the_node_after_the_one_it_lost() -> None:
    params = connection_parameters(THREE, name="t")
    assert [p.host for p in rotated(params, None)] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [p.host for p in rotated(params, "10.0.0.1:5672")] == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]
    assert [p.host for p in rotated(params, "10.0.0.3:5672")] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert [p.host for p in rotated(params, "10.0.0.2:5673")] == ["10.0.0.3", "10.0.0.1", "10.0.0.2"]
    assert rotated(params, "10.0.0.9:5672") == params
    [one] = connection_parameters(ONE, name="t")
    assert rotated([one], "localhost:5672") == [one]


@pytest.mark.parametrize("value, message", [
    ("amqp://jit:s3cret@a/v,garbage", "node URL 2 of 2 (garbage): not a RabbitMQ URL"),
    ("amqp://jit:s3cret@a/v,http://jit:s3cret@b/v", "node URL 2 of 2 (http://jit:[redacted]@b/v): not a RabbitMQ URL"),
    ("amqp://jit:s3cret@a:x/v,amqp://jit:s3cret@b/v", "node URL 1 of 2 (amqp://jit:[redacted]@a:x/v)"),
    ("amqp://jit:s3cret@a/v,,amqp://jit:s3cret@b/v", "node URL 2 of 3 (empty): not a RabbitMQ URL"),
    ("amqp://jit:s3cret@a/v,", "node URL 2 of 2 (empty)"),
    ("amqp://jit:s3cret@a/v,amqp://other:s3cret@b/v", "the node URLs name different users or vhosts"),
    ("amqp://jit:s3cret@a/v,amqp://jit:s3cret@b/w", "the node URLs name different users or vhosts"),
])
def test_a_bad_node_is_named_without_its_password(value: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment({"JIT_AMQP_URL": value})
    assert f"JIT_AMQP_URL: {message}" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_the_broker_user_and_the_plaintext_warnings_cover_every_node() -> None:
    assert broker_user(THREE) == "jit"
    warnings = plaintext_warnings(THREE, "sqlite:///x.db")
    assert [w.split(" to ")[1].split(":")[0] for w in warnings] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert plaintext_warnings("amqp://u:p@127.0.0.1/v,amqps://u:p@10.0.0.2/v", "sqlite:///x.db") == []
    assert hide_password(THREE).count("[redacted]") == 3 and "pw" not in hide_password(THREE)
