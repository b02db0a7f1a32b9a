"""metalearn.secrets: secret-named keys masked and secret environment values scrubbed, recursively."""

from __future__ import annotations

from metalearn.secrets import REDACTED, copy_scrubbed, redact, secret_values

SECRET = "mpkey-" + "q7" * 13  # 32 characters, like a real MP key


def test_secret_values_come_from_secret_named_variables_of_real_length():
    env = {"MP_API_KEY": SECRET, "PMG_MAPI_KEY": "short", "MLFLOW_TRACKING_PASSWORD": "p" * 20,
           "HOME": "/home/someone/with/a/long/path", "KEYBOARD": "x" * 20}
    assert sorted(secret_values(env)) == sorted([SECRET, "p" * 20])


def test_redact_masks_secret_keys_and_values_at_any_depth():
    obj = {"query": {"api_key": "abc", "fields": ["x", f"key={SECRET}"]}, "ingest.token": "t",
           "empty_password": "", "note": (SECRET, 3)}
    out = redact(obj, [SECRET])
    assert out["query"]["api_key"] == REDACTED and out["ingest.token"] == REDACTED
    assert out["query"]["fields"] == ["x", f"key={REDACTED}"]
    assert out["empty_password"] == ""  # nothing to hide
    assert out["note"] == [REDACTED, 3]
    assert redact(f"text {SECRET} text", [SECRET]) == f"text {REDACTED} text"
    assert redact({"monkey": "banana"}, []) == {"monkey": "banana"}


def test_copy_scrubbed_replaces_secrets_in_text_and_copies_binary(tmp_path):
    text, binary = tmp_path / "summary.md", tmp_path / "plot.png"
    text.write_text(f"# report\nkey was {SECRET}\n")
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    copy_scrubbed(text, tmp_path / "out.md", [SECRET])
    copy_scrubbed(binary, tmp_path / "out.png", [SECRET])
    assert (tmp_path / "out.md").read_text() == f"# report\nkey was {REDACTED}\n"
    assert (tmp_path / "out.png").read_bytes() == binary.read_bytes()
