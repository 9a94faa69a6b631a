"""Signed event ids: genuine ones verify from any process with the same key file; forged ones never do."""

from __future__ import annotations

import os
import stat

from serving.ledger import issued_s
from serving.tokens import EventSigner, load_or_create_key


def test_issue_verify_round_trip_and_issue_time(tmp_path):
    signer = EventSigner.from_dir(tmp_path)
    eid = signer.issue("v-1.2_x", now_s=1_700_000_000.0)
    got = signer.verify(eid)
    assert got is not None and got.model_version == "v-1.2_x" and got.issued_s == 1_700_000_000.0
    assert issued_s(eid) == 1_700_000_000.0
    assert len({signer.issue("v") for _ in range(500)}) == 500  # nonces differ


def test_key_is_created_once_private_and_shared(tmp_path):
    k1 = load_or_create_key(tmp_path / "state")
    k2 = load_or_create_key(tmp_path / "state")  # a second replica / a restarted app
    assert k1 == k2 and len(k1) == 32
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "event_key").st_mode) == 0o600
    eid = EventSigner(k1).issue("v")
    assert EventSigner(k2).verify(eid) is not None
    assert EventSigner(load_or_create_key(tmp_path / "other")).verify(eid) is None  # another deployment


def test_forged_and_altered_ids_are_refused(tmp_path):
    signer = EventSigner.from_dir(tmp_path)
    eid = signer.issue("v-a", now_s=1_700_000_000.0)
    head, nonce, ver, mac = eid.split(".")
    import base64

    other_ver = base64.urlsafe_b64encode(b"v-b").rstrip(b"=").decode()
    for bad in (
        "",
        "garbage",
        f"{head}.{nonce}.{ver}",  # no MAC
        f"{head}.{nonce}.{other_ver}.{mac}",  # version swapped
        f"{'z' + head[1:]}.{nonce}.{ver}.{mac}",  # issue time moved (to dodge the TTL)
        f"{head}.{nonce}.{ver}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",  # MAC altered
        f"{head}.{nonce}.{ver}.{mac}.x",
        "a.b.c.d",
    ):
        assert signer.verify(bad) is None, bad
