"""Loading the token keys: configured PEM files, and the generated development key."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from servicekit.errors import StartupError
from users_service.settings import UsersSettings
from users_service.signing_keys import (
    load_signing_keys,
    private_key_pem,
    public_key_pem,
    thumbprint,
)


def test_one_key_signs_and_every_listed_key_verifies(tmp_path: Path) -> None:
    new, old = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    (tmp_path / "new.pem").write_bytes(private_key_pem(new))
    (tmp_path / "old.pub").write_bytes(public_key_pem(old.public_key()))
    keys = load_signing_keys(tmp_path / "new.pem", [tmp_path / "old.pub"], tmp_path / "dev.pem")
    assert keys.signing_kid == thumbprint(new.public_key())
    assert [k["kid"] for k in keys.jwks()["keys"]] == [
        thumbprint(new.public_key()),
        thumbprint(old.public_key()),
    ]
    # No private member is ever published.
    assert all("d" not in key for key in keys.jwks()["keys"])
    assert not (tmp_path / "dev.pem").exists()


def test_without_a_key_one_is_generated_once_and_kept(tmp_path: Path) -> None:
    dev = tmp_path / "data" / "key.pem"
    first = load_signing_keys(None, [], dev)
    assert stat.S_IMODE(dev.stat().st_mode) == 0o600
    assert load_signing_keys(None, [], dev).signing_kid == first.signing_kid


def test_replicas_starting_at_once_agree_on_one_key(tmp_path: Path) -> None:
    for attempt in range(20):
        dev = tmp_path / f"round-{attempt}" / "key.pem"
        with ThreadPoolExecutor(8) as pool:
            kids = {
                f.result().signing_kid
                for f in [pool.submit(load_signing_keys, None, [], dev) for _ in range(8)]
            }
        assert len(kids) == 1
        assert os.listdir(dev.parent) == ["key.pem"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key", "is not an unencrypted PEM private key"),
        (b"", "is not an unencrypted PEM private key"),
    ],
)
def test_a_bad_key_file_stops_start_up_naming_it(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    with pytest.raises(StartupError, match=message):
        load_signing_keys(bad, [], tmp_path / "dev.pem")
    with pytest.raises(StartupError, match="cannot read the token key"):
        load_signing_keys(tmp_path / "missing.pem", [], tmp_path / "dev.pem")


def test_an_unwritable_key_directory_is_one_line(tmp_path: Path) -> None:
    # A file where the directory should be: not writable even by root.
    (tmp_path / "not-a-directory").write_text("")
    with pytest.raises(StartupError, match="cannot write the generated token key"):
        load_signing_keys(None, [], tmp_path / "not-a-directory" / "key.pem")


def test_an_empty_signing_key_setting_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USERS_TOKEN_SIGNING_KEY_FILE", "")
    assert UsersSettings().token_signing_key_file is None
