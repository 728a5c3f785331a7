"""``python -m diffseg IMAGE... --vocab "person, car" --model MODEL --out DIR``: segment single images.

For each image and method it writes ``STEM.METHOD.labels.png`` (the label map: 0 = background, k =
the k-th class), ``STEM.METHOD.overlay.png`` (colour overlay with a legend) and ``STEM.METHOD.json``
(per-class statistics, COCO RLE included). Inputs sharing a stem (``pic.bmp``, ``pic.webp``) use their
whole file name instead (``pic.bmp.METHOD...``), and inputs sharing that too get ``-2``, ``-3``... in
the order given, so no output overwrites another (:func:`output_stems`). Each image is read as the one
object its path or URL names (a ``::`` in it is part of the name). Nothing printed shows a credential
of a URL argument (diffseg.redact). For collections, use the Ray job: ``python -m jobs.segment``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from diffseg.argtypes import CommandParser, add_recipe_options, positive_int, recipe_kwargs
from diffseg.redact import redacting

EPILOG = """examples:
  python -m diffseg photo.jpg street.png --vocab "person, car, potted plant, road" --model tiny --out out/
  python -m diffseg s3://bucket/img.jpg --vocab classes.txt --model s3://models/sd15/ --dtype fp16
  python -m diffseg a.jpg --vocab "cat, dog" --method maskdiffusion --method diffsegmenter \
      --tau diffsegmenter=0.45 --tau maskdiffusion=0.3 --timesteps 100 --template "a photo of {classes}"

Recipe: alone, each method runs its paper's recipe (diffsegmenter: t=100, "a photograph of {classes}"
joined ", "; seediff: t=100, "a photo of {classes}"; maskdiffusion: one pass at t=0 on the noise-free
latent, "{classes}" joined " and "); several methods share DiffSegmenter's. --timesteps, --template,
--separator and --class-token-weight override it; the recipe used is printed.

--model takes 'tiny' (an offline random pipeline: its masks are meaningless), 'sd15-random' /
'sd21-random' (full-size random weights, for timing), a local folder, or an fsspec URL of a
diffusers-format Stable Diffusion 1.x/2.x checkpoint. --vocab is a comma-separated list or a file
with one class per line ('name: alias, alias' allowed).

exit codes: 0 every image segmented, 1 no image could be segmented, 2 bad option (model, vocabulary,
thresholds), 3 some images failed (their errors are printed; the others were written).
"""


def build_parser() -> argparse.ArgumentParser:
    from diffseg import methods
    from diffseg.eval.fitted import tau_option

    p = CommandParser(
        prog="python -m diffseg",
        description="Segment images against an open vocabulary with a frozen Stable Diffusion U-Net.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", help="image paths or URLs (local, file://, s3://, gs://)")
    p.add_argument("--vocab", required=True, help="comma-separated class names, or a class file path/URL")
    p.add_argument("--model", default="tiny", help="model name, folder or URL (default: tiny)")
    p.add_argument("--out", default="out", help="output folder (default: out)")
    p.add_argument("--method", action="append", choices=methods.available(),
                   help="method; repeat for several from one forward (default: diffsegmenter)")
    p.add_argument("--resolution", type=positive_int, default=512,
                   help="model input side in pixels, a multiple of 64 for Stable Diffusion (default: 512)")
    add_recipe_options(p)
    p.add_argument("--tau", type=tau_option, action="append", default=None, metavar="[METHOD=]X",
                   help="background threshold; METHOD=X per method (repeat), a bare X only when the methods' "
                   "thresholds share a scale (DiffSegmenter default 0.4, provisional)")
    p.add_argument("--fitted", default=None,
                   help="fitted.json from `python -m jobs.evaluate --fit tau`: use its background thresholds")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, fp16, bf16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per forward (default: 4)")
    return p


def output_stems(uris: list[str]) -> list[str]:
    """One distinct output name per input, in order: the file's stem; its whole name when another input
    has the same stem (``pic.bmp`` and ``pic.webp``); then ``-2``, ``-3``... for names still repeated
    (``a/pic.jpg`` and ``b/pic.jpg``)."""
    names = [Path(u.rstrip("/")).name for u in uris]
    stems = [Path(n).stem for n in names]
    counts = Counter(stems)
    chosen = [s if counts[s] == 1 else n for s, n in zip(stems, names)]
    repeated, taken, out = Counter(chosen), set(chosen), []
    seen: Counter = Counter()
    for name in chosen:
        seen[name] += 1
        if repeated[name] > 1 and seen[name] > 1:
            k = seen[name]
            while f"{name}-{k}" in taken:
                k += 1
            name = f"{name}-{k}"
            taken.add(name)
        out.append(name)
    return out


def method_params(methods: list[str], tau, fitted_uri: str | None) -> dict:
    """Per-method params from --tau (parsed [(method or None, x)]; diffseg.eval.fitted.tau_values) or a
    fitted.json.

    Reads through :func:`diffseg.eval.fitted.background_values`, the one reader the job uses too.
    """
    from diffseg.eval.fitted import background_values
    from diffseg.methods import make_params

    return {m: make_params(m, v) for m, v in background_values(methods, tau, fitted_uri).items()}


@redacting
def main(argv: list[str] | None = None) -> int:
    """Runs the command; everything it prints is redacted (no credential of a URL argument shown), and an
    unexpected error is one redacted ``error:`` line, exit 1 (diffseg.redact.redacting)."""
    return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from diffseg import Segmenter, Vocabulary, load_pipeline
    from diffseg.codecs.images import ImageDecodeError, load_image
    from diffseg.codecs.masks import encode_segmentation
    from diffseg.codecs.overlay import render_overlay
    from diffseg.model import ModelLoadError
    from diffseg.redact import redact_uri

    try:
        vocab = Vocabulary.from_spec(args.vocab)
        pipe = load_pipeline(args.model, dtype=args.dtype, device=args.device)
        methods = args.method or ["diffsegmenter"]
        params = method_params(methods, args.tau, args.fitted)
        seg = Segmenter(pipe, vocab, method=methods, params=params, resolution=args.resolution,
                        **recipe_kwargs(args.context, args.timesteps, args.template, args.separator,
                                        args.class_token_weight))
    except (ValueError, ModelLoadError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("recipe: " + ", ".join(f"{k} {v!r}" for k, v in seg.recipe.items()), file=sys.stderr)
    title = None
    if pipe.is_random:
        title = f"model '{args.model}' has RANDOM weights: these masks are meaningless"
        print(f"NOTE: {title}. Pass --model with a real Stable Diffusion checkpoint for real masks.", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    started = time.perf_counter()
    stems = output_stems(args.images)
    for start in range(0, len(args.images), args.batch_size):
        loaded = []
        for uri, stem in zip(args.images[start : start + args.batch_size], stems[start : start + args.batch_size]):
            try:
                loaded.append((uri, stem, load_image(uri)))
            except (ImageDecodeError, OSError) as exc:
                failures += 1
                print(f"skipped {uri}: {exc}", file=sys.stderr)
        if not loaded:
            continue
        results = seg.segment([img for _, _, img in loaded], keys=[u for u, _, _ in loaded])
        for method, per_image in results.items():
            for (uri, stem, img), res in zip(loaded, per_image):
                base = out / f"{stem}.{method}"
                mask, stats = encode_segmentation(res, vocab.names)  # names: the result's own where it has them
                Path(f"{base}.labels.png").write_bytes(mask["label_map_png"])
                render_overlay(img, res.label_map, res.label_names(vocab.names), title=title).save(f"{base}.overlay.png")
                meta = {"uri": redact_uri(uri), "method": method, "model": pipe.name, "width": img.shape[1],
                        "height": img.shape[0], "vocabulary": vocab.names, "classes": stats}
                Path(f"{base}.json").write_text(json.dumps(meta, indent=1, default=float))
                found = ", ".join(f"{s['class_name']} {s['fraction']:.0%}" for s in stats) or "background only"
                print(f"{uri} [{method}]: {found} -> {base}.overlay.png")
    n = len(args.images) - failures
    print(f"segmented {n} image(s), {failures} failed, in {time.perf_counter() - started:.1f}s; outputs in {out}/")
    return 1 if failures and not n else (3 if failures else 0)


if __name__ == "__main__":
    sys.exit(main())
