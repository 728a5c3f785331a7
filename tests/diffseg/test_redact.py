"""Credentials never printed: URIs, exception texts (botocore's echoed URLs), stdout/stderr and logs."""

from __future__ import annotations

import logging
import sys

import pytest
from jobtest_utils import run_main

from diffseg.redact import describe_error, redact_text, redact_uri, redacted_output

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("uri, shown", [
    (f"s3://{KEY}:{SECRET}@bucket/sd15/", "s3://bucket/sd15/"),
    ("http://user:password@host:9000/x.jpg", "http://host:9000/x.jpg"),
    ("https://TOKEN123@github.com/org/repo", "https://github.com/org/repo"),
    ("https://b.s3.amazonaws.com/x.jpg?X-Amz-Credential=AK%2F1&X-Amz-Signature=abc123&v=2",
     "https://b.s3.amazonaws.com/x.jpg?X-Amz-Credential=***&X-Amz-Signature=***&v=2"),
    ("s3://bucket/a:b/c@d.jpg", "s3://bucket/a:b/c@d.jpg"),  # no userinfo: a ':' and '@' inside the path
    ("file:///lake/colon::x.png", "file:///lake/colon::x.png"),
])
def test_redact_uri_drops_userinfo_and_secret_query_values(uri, shown):
    assert redact_uri(uri) == shown


def test_redact_text_cleans_messages_that_echo_urls_or_keys():
    botocore = (f"Invalid endpoint: https://{KEY}:{SECRET}@s3.example.com; The AWS Access Key Id you provided "
                f"({KEY}) does not exist; aws_secret_access_key={SECRET}; \"password\": \"hunter22\"")
    out = redact_text(botocore, uris=[f"s3://{KEY}:{SECRET}@bucket/x"])
    assert KEY not in out and SECRET not in out and "hunter22" not in out
    assert "https://***@s3.example.com" in out and "Invalid endpoint" in out
    # ordinary messages are left alone
    plain = "class 'x' is longer than one 77-token context; tokenizer: CLIPTokenizer; s3://bucket/a.jpg"
    assert redact_text(plain) == plain
    assert describe_error(ValueError("cannot open http://u:pa55word@h/x")) == "ValueError: cannot open http://***@h/x"


def test_redacted_output_cleans_prints_and_log_records(capsys, caplog):
    uri = f"s3://{KEY}:{SECRET}@bucket/x"
    log = logging.getLogger("diffseg.test_redact")
    with redacted_output([uri]):
        print(f"error: {uri} failed")
        print(f"key {KEY} alone", file=sys.stderr)
        log.warning("listing %s failed", uri)
    out, err = capsys.readouterr()
    assert KEY not in out + err and SECRET not in out + err and SECRET not in caplog.text and KEY not in caplog.text
    assert "error: s3://***@bucket/x failed" in out and "key *** alone" in err
    print(f"after: {KEY}")  # outside the context nothing is changed
    assert KEY in capsys.readouterr().out


def test_every_reading_command_redacts_credentials_in_its_arguments(tmp_path, capsys):
    """evaluate, report, export and status print no URL password they were given, even in errors."""
    from jobs.evaluate.cli import main as evaluate
    from jobs.export.cli import main as export
    from jobs.report.cli import main as report
    from jobs.status.cli import main as status

    output = "s3://AKIDSECRETKEY:wJalrXUtnFEMIsecret@lake/seg/"
    for main, argv in ((report, [output, "--out", str(tmp_path / "r.html")]),
                       (status, [output]),
                       (export, [output, "--format", "coco", str(tmp_path / "x")]),
                       (evaluate, [output, "--gt", str(tmp_path), "--class-map", "voc21"])):
        _, out, err = run_main(main, capsys, *argv)
        printed = out + err
        assert printed.strip(), main.__module__  # it said why it failed
        assert "wJalrXUtnFEMIsecret" not in printed and "AKIDSECRETKEY" not in printed, (main.__module__, printed)
