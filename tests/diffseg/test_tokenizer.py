"""The offline tiny tokenizer leaves nothing behind (every test and demo run built one into a temporary
folder that stayed: thousands of diffseg-tok-* folders in /tmp)."""

import tempfile

from diffseg.tokenizer import build_tiny_tokenizer


def test_building_the_tiny_tokenizer_leaves_no_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tokenizer = build_tiny_tokenizer()
    assert list(tmp_path.iterdir()) == []
    ids = tokenizer("a photo of a dog")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) > 3
