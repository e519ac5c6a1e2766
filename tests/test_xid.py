"""The xid codec: exact round trips, the databases' limits, and refusal of malformed ids."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twostep.client import InvalidIdentifier
from twostep.client.tpc import (
    FORMAT_ID,
    Xid,
    new_gtrid,
    owner_tag,
    parse_gtrid,
    validate_cluster_id,
    validate_resource_name,
)

clusters = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
resources = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", fullmatch=True)
deadlines = st.integers(min_value=0, max_value=36**7 - 1)  # until the year 4453
owners = st.one_of(st.just(""), st.from_regex(r"[a-z2-7]{8}", fullmatch=True))


@given(clusters, deadlines, owners, st.booleans(), resources)
def test_xid_round_trips_through_both_databases_encodings(
    cluster, deadline, owner, minted, resource
):
    gtrid = new_gtrid(cluster, deadline, minted=minted, owner=owner)
    xid = Xid.of(gtrid, resource)
    info = parse_gtrid(gtrid)
    assert (info.cluster, info.deadline_unix_s, info.owner, info.minted) == (
        cluster,
        deadline,
        owner,
        minted,
    )
    assert Xid.from_pg_gid(xid.pg_gid()) == xid
    raw = (gtrid + resource).encode()
    assert Xid.from_mysql_recover(FORMAT_ID, len(gtrid), len(resource), raw) == xid


@given(clusters, deadlines, owners, resources)
def test_encoded_xids_fit_the_databases_limits(cluster, deadline, owner, resource):
    xid = Xid.of(new_gtrid(cluster, deadline, minted=True, owner=owner), resource)
    assert len(xid.gtrid.encode()) <= 64  # MySQL gtrid
    assert len(xid.bqual.encode()) <= 64  # MySQL bqual
    assert len(xid.pg_gid().encode()) < 200  # PostgreSQL gid


def test_a_gtrid_made_before_owner_tags_still_parses_with_no_owner():
    info = parse_gtrid("ts2.main.sp3ruo.aaaaaaaaaaaaaaaaaaaaaaaa")
    assert (info.cluster, info.minted, info.owner) == ("main", True, "")


def test_owner_tags_differ_by_identity_and_by_cluster_and_fit_a_gtrid():
    tags = {owner_tag(c, i) for c in ("main", "other") for i in ("token:a", "token:b")}
    assert len(tags) == 4
    tag = owner_tag("main", "cert:app")
    assert tag == owner_tag("main", "cert:app")  # stable: replicas and restarts agree
    assert parse_gtrid(new_gtrid("main", int(time.time()), owner=tag)).owner == tag


@pytest.mark.parametrize("bad", ["x", "ABCDEFGH", "abcdefg", "abcdefgh2", "abcdefg1", "abc.efgh"])
def test_a_malformed_owner_tag_is_refused(bad):
    with pytest.raises(InvalidIdentifier):
        new_gtrid("main", 0, owner=bad)


def test_a_gtrid_longer_than_64_characters_is_refused():
    with pytest.raises(InvalidIdentifier):
        new_gtrid("a" * 16, 36**9, owner="abcdefgh")
    version, cluster, deadline, owner, nonce = new_gtrid(
        "a" * 16, 36**7 - 1, owner="abcdefgh"
    ).split(".")
    too_long = ".".join((version, cluster, "000" + deadline, owner, nonce))
    assert len(too_long) == 65
    with pytest.raises(InvalidIdentifier):
        parse_gtrid(too_long)


def test_gtrids_are_unique():
    deadline = int(time.time())
    assert len({new_gtrid("main", deadline) for _ in range(10_000)}) == 10_000


BAD_IDS = [
    "",
    "x" * 65,
    "it's",
    'a"b',
    "a\x00b",
    "a b",
    "a;DROP TABLE t",
    "é",
    ".hidden",
    "-dash",
    None,
    42,
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_malformed_resource_names_are_rejected(bad):
    with pytest.raises(InvalidIdentifier):
        validate_resource_name(bad)


@pytest.mark.parametrize("bad", [*BAD_IDS, "UPPER", "a" * 17, "trailing-"], ids=repr)
def test_malformed_cluster_ids_are_rejected(bad):
    with pytest.raises(InvalidIdentifier):
        validate_cluster_id(bad)


@pytest.mark.parametrize(
    "bad",
    [
        *BAD_IDS,
        "ts1.main.0.aaaaaaaaaaaaaaaaaaaaaaa",  # nonce one short
        "ts1.main.0.aaaaaaaaaaaaaaaaaaaaaaaa'",
        "ts3.main.0.aaaaaaaaaaaaaaaaaaaaaaaa",
        "ts1.Main.0.aaaaaaaaaaaaaaaaaaaaaaaa",
        "ts1.main.0.aaaaaaaaaaaaaaaaaaaaaaaa\x00",
    ],
    ids=repr,
)
def test_malformed_gtrids_are_rejected_before_any_sql(bad):
    with pytest.raises(InvalidIdentifier):
        parse_gtrid(bad)
    with pytest.raises(InvalidIdentifier):
        Xid.of(bad, "orders")


@given(st.text(max_size=250))
def test_foreign_pg_gids_are_not_taken_for_ours(gid):
    xid = Xid.from_pg_gid(gid)
    assert xid is None or xid.pg_gid() == gid


def test_foreign_mysql_xids_are_not_taken_for_ours():
    gtrid = new_gtrid("main", 0)
    raw = (gtrid + "orders").encode()
    assert Xid.from_mysql_recover(1, len(gtrid), 6, raw) is None  # another format id
    assert Xid.from_mysql_recover(FORMAT_ID, 5, 0, b"m1b1x") is None  # not a twostep gtrid
    assert Xid.from_mysql_recover(FORMAT_ID, len(gtrid), 7, raw) is None  # lengths disagree


def test_mysql_literal_is_hex_only():
    xid = Xid.of(new_gtrid("main", 0), "orders")
    literal = xid.mysql_literal()
    gtrid_hex, bqual_hex, fmt = literal.split(",")
    assert bytes.fromhex(gtrid_hex[2:-1]).decode() == xid.gtrid
    assert bytes.fromhex(bqual_hex[2:-1]).decode() == "orders"
    assert int(fmt) == FORMAT_ID
