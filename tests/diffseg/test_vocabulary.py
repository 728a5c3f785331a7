import pytest
import torch

from diffseg.vocabulary import (
    Vocabulary,
    class_token_weight,
    context_length,
    empty_prompt_ids,
    encode_context,
    encode_text,
    upweight_class_tokens,
)


def _tokens_at(tokenizer, ids, span):
    return tokenizer.convert_ids_to_tokens([ids[i] for i in span])


def test_multi_token_names_use_every_token(tiny_pipe):
    tok = tiny_pipe.tokenizer
    vocab = Vocabulary(["cat", "potted plant", "tv monitor"], aliases={"tv monitor": ["television"]})
    enc = vocab.encode(tok)
    ids = enc.input_ids[0].tolist()
    spans = enc.spans[0]
    assert _tokens_at(tok, ids, spans[0]) == ["cat</w>"]
    potted = tok("potted plant", add_special_tokens=False).input_ids
    assert len(potted) > 2  # the tiny vocabulary splits these words into pieces
    assert [ids[i] for i in spans[1]] == potted
    tv = tok("tv monitor", add_special_tokens=False).input_ids + tok("television", add_special_tokens=False).input_ids
    assert [ids[i] for i in spans[2]] == tv
    # the pieces concatenate to exactly what the tokenizer makes of the whole prompt
    whole = tok("a photograph of cat, potted plant, tv monitor, television").input_ids
    assert ids[: len(whole)] == whole
    assert len(ids) == 77


def test_long_vocabulary_is_split_into_chunks_without_cutting_a_class(tiny_pipe):
    tok = tiny_pipe.tokenizer
    names = [f"class{i} thing{i}" for i in range(30)]  # ~10 tokens each: far over one 77-token context
    enc = Vocabulary(names).encode(tok)
    ids = enc.input_ids[0].tolist()
    assert len(ids) % 77 == 0 and len(ids) >= 4 * 77
    for name, span in zip(names, enc.spans[0]):
        assert len({p // 77 for p in span}) == 1, f"{name} straddles a chunk"
        assert [ids[i] for i in span] == tok(name, add_special_tokens=False).input_ids
    for c in range(len(ids) // 77):  # each chunk is wrapped in start/end tokens
        chunk = ids[c * 77 : (c + 1) * 77]
        assert chunk[0] == tok.bos_token_id and tok.eos_token_id in chunk[1:]


def test_per_class_mode_has_one_prompt_per_class(tiny_pipe):
    tok = tiny_pipe.tokenizer
    enc = Vocabulary(["cat", "potted plant"]).encode(tok, "per_class")
    assert enc.input_ids.shape == (2, 77)
    assert tok.decode(enc.input_ids[1][enc.spans[1][0]]).strip() == "potted plant"


def test_from_text_and_spec(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("# my classes\nperson: man, woman\n\ncar\n  potted   plant  \n")
    v = Vocabulary.from_spec(str(f))
    assert v.names == ["person", "car", "potted plant"]
    assert v.aliases["person"] == ("man", "woman")
    assert Vocabulary.from_spec("person, car ,road").names == ["person", "car", "road"]
    assert v.hash("tiny") != v.hash("sd15") and v.hash("tiny") == Vocabulary.from_spec(str(f)).hash("tiny")


@pytest.mark.parametrize(
    "names, message",
    [([], "empty"), ([" ", ""], "empty"), (["cat", "cat"], "repeated: cat")],
)
def test_bad_vocabularies_are_refused_with_a_clear_error(names, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(names)


@pytest.mark.parametrize("names", [["cat", "Cat", "CAT"], ["potted plant", "Potted  Plant"], ["dog", " DOG "]])
def test_names_equal_ignoring_case_and_spaces_are_refused(names):
    with pytest.raises(ValueError, match="unique ignoring case and spaces; repeated: "):
        Vocabulary(names)
    with pytest.raises(ValueError, match="repeated: cat = Cat = CAT"):
        Vocabulary.from_spec("cat, Cat, CAT")
    with pytest.raises(ValueError, match="class names and aliases .* repeated: Man = man"):
        Vocabulary(["person", "Man"], aliases={"person": ["man"]})


def test_a_spec_that_looks_like_a_missing_path_or_a_folder_is_refused(tmp_path, monkeypatch):
    from diffseg.vocabulary import looks_like_path

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="'clases.txt' looks like a file path but no such file exists"):
        Vocabulary.from_spec("clases.txt")
    with pytest.raises(ValueError, match="no such file"):
        Vocabulary.from_spec("lists/voc")
    (tmp_path / "classes.txt").mkdir()
    with pytest.raises(ValueError, match="'classes.txt' is a folder"):
        Vocabulary.from_spec("classes.txt")
    # a trailing comma makes it a one-class list; plain names are lists as before
    assert Vocabulary.from_spec("clases.txt,").names == ["clases.txt"]
    assert Vocabulary.from_spec("person").names == ["person"]
    assert [looks_like_path(s) for s in ("a.TXT", "x/y", "person, car", "tv monitor", "s3://b/c.txt")] == [
        True, True, False, False, True]


def test_a_class_longer_than_one_context_is_refused_wherever_it_stands(tiny_pipe):
    long_name = " ".join(["potted"] * 80)
    for names in ([long_name], ["cat", long_name], ["cat", long_name, "dog"]):
        with pytest.raises(ValueError, match="'potted potted .* is longer than one 77-token context"):
            Vocabulary(names).encode(tiny_pipe.tokenizer)


# --- class-token up-weighting (Compel) --------------------------------------------------------------


class StubEncoder(torch.nn.Module):
    """A text encoder whose every output holds a large shared component (dimension 0, as CLIP's) plus a
    per-token part that also depends on the preceding token (a causal encoder's context)."""

    def __init__(self, vocab_size: int, dim: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.randn(vocab_size, dim, generator=g)
        self.table[:, 0] = 0.0

    def forward(self, ids):
        own = self.table[ids]
        previous = torch.cat([torch.zeros_like(own[:, :1]), own[:, :-1]], 1)
        hidden = own + 0.5 * previous
        hidden[..., 0] = 30.0  # the shared component every token carries
        return (hidden,)


def test_class_token_weight_defaults_to_the_paper_in_per_class_mode_only():
    assert class_token_weight("per_class") == 1.21 and class_token_weight("joint") == 1.0
    assert class_token_weight("joint", 1.5) == 1.5
    with pytest.raises(ValueError, match="'both'"):
        class_token_weight("both")


@pytest.mark.parametrize("mode", ["joint", "per_class"])
def test_compel_upweighting_on_a_stub_encoder(tiny_pipe, mode):
    tok = tiny_pipe.tokenizer
    prompt = Vocabulary(["cat", "potted plant", "tv monitor"]).encode(tok, mode)
    encoder = StubEncoder(len(tok))
    plain = encode_context(encoder, tok, prompt, "cpu", torch.float32)
    assert torch.equal(encode_context(encoder, tok, prompt, "cpu", torch.float32, weight=1.0), plain)
    w = 1.21
    weighted = encode_context(encoder, tok, prompt, "cpu", torch.float32, weight=w)
    chunk = context_length(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    empty = encoder(torch.tensor([[tok.bos_token_id, tok.eos_token_id] + [pad] * (chunk - 2)]))[0][0]
    for row, spans in enumerate(prompt.spans):
        positions = sorted({p for span in spans for p in span})
        others = [p for p in range(plain.shape[1]) if p not in positions]
        z, z0 = plain[row, positions], empty[[p % chunk for p in positions]]
        assert torch.allclose(weighted[row, positions], z0 + w * (z - z0), atol=1e-6)
        assert torch.equal(weighted[row, others], plain[row, others])  # only the class tokens move
        # CLIP's shared component is not scaled (scaling z would multiply it by w)
        assert torch.allclose(weighted[row, positions, 0], plain[row, positions, 0])
        assert not torch.allclose(weighted[row, positions, 1:], plain[row, positions, 1:])


def test_compel_upweighting_keeps_the_real_encoder_output_at_weight_one(tiny_pipe):
    prompt = Vocabulary(["cat", "dog"]).encode(tiny_pipe.tokenizer, "joint")
    chunk = context_length(tiny_pipe.tokenizer)
    plain = encode_text(tiny_pipe.text_encoder, prompt.input_ids, chunk, "cpu", torch.float32)
    same = encode_context(tiny_pipe.text_encoder, tiny_pipe.tokenizer, prompt, "cpu", torch.float32)
    assert torch.equal(same, plain)
    empty = torch.zeros(chunk, plain.shape[-1])
    doubled = upweight_class_tokens(plain, empty, prompt.spans, 2.0)  # an all-zero empty: a plain scale
    cat = prompt.spans[0][0]
    assert torch.allclose(doubled[0, cat], 2 * plain[0, cat])


@pytest.mark.parametrize("pad_token", [None, "!"])  # SD 1.x pads with the end token, SD 2.x with "!"
def test_the_empty_prompt_is_what_clips_tokenizer_makes_of_an_empty_string(tmp_path, pad_token):
    """encode_context (Compel's empty prompt) and generate (classifier-free guidance) share it."""
    from transformers import CLIPTokenizer

    from diffseg.tokenizer import write_tiny_tokenizer

    folder = write_tiny_tokenizer(tmp_path)
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                        **({"pad_token": pad_token} if pad_token else {}))
    for length in (77, 32):
        made = tok("", padding="max_length", max_length=length, return_tensors="pt").input_ids
        assert torch.equal(empty_prompt_ids(tok, length), made)


def test_a_benchmark_name_gives_its_built_in_vocabulary(tmp_path, monkeypatch):
    """`--vocab voc21` is VOC's 20 classes (with their prompt names and aliases), not one class 'voc21'."""
    voc = Vocabulary.from_spec("voc21")
    assert len(voc.names) == 20 and "person" in voc.names and "voc21" not in voc.names
    assert len(Vocabulary.from_spec("coco_object").names) == 80
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voc21").write_text("cat\ndog\n")  # a local file of that name wins
    assert Vocabulary.from_spec("voc21").names == ["cat", "dog"]
    assert Vocabulary.from_spec("sky").names == ["sky"]  # any other single name is a one-class list
