"""Expected CLIP token ids for tests/clip_tokenizer.rs, from transformers' CLIPTokenizer.

CLIPTokenizer is the class diffusers' StableDiffusionPipeline tokenizes with; it is called as
the pipeline calls it: padding="max_length", max_length=model_max_length, truncation=True.

The vocabulary is CLIP's real one, built from open_clip's `bpe_simple_vocab_16e6.txt.gz`
(committed beside the fixtures) exactly as CLIP builds it: the 256 byte symbols, the same with
`</w>`, the first 48894 merges joined, `<|startoftext|>`, `<|endoftext|>` (49408 entries).

For each folder variant (both published layouts, both pad conventions, the files as
transformers 4.x and 5.x save them) the script writes the small files of the folder under
tests/fixtures/clip-tokenizer/<variant>/: tokenizer_config.json, special_tokens_map.json and a
tokenizer.json whose `model.vocab` / `model.merges` are left empty (the test fills them from
the gz, keeping the repository small). expected.json holds the prompts and, per variant, the
ids up to the end token (the rest is padding, `pad_id` up to `max_length`).

Run from the repository root:  /work/venv/bin/python tests/tools/make_clip_tokenizer_fixtures.py
"""

import json
import os
import shutil
import tempfile

import transformers
from transformers import CLIPTokenizer

from clip_vocab import EOT, SOT, clip_vocab

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "clip-tokenizer")


def added(content, normalized):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}


def legacy_config(pad):
    """tokenizer_config.json / special_tokens_map.json as SD 1.x / 2.x folders publish them."""
    tok = lambda c: dict(added(c, True), __type="AddedToken")
    config = {
        "add_prefix_space": False,
        "bos_token": tok(SOT),
        "do_lower_case": True,
        "eos_token": tok(EOT),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": tok(EOT),
    }
    special = {"bos_token": added(SOT, True), "eos_token": added(EOT, True), "pad_token": pad, "unk_token": added(EOT, True)}
    return config, special


def v4_config(pad):
    """tokenizer_config.json as transformers 4.3x+ saves it (added_tokens_decoder)."""
    decoder = {"49406": dict(added(SOT, True), special=True), "49407": dict(added(EOT, pad != EOT), special=True)}
    if pad == "!":
        decoder["0"] = dict(added("!", False), special=True)
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "bos_token": SOT,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOT,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOT,
    }
    return config


PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "",
    "   ",
    "\t\t\n",
    "Hello, World!!! How's it going?",
    "A PHOTO OF A CAT",
    "tabs\tand\nnewlines\r\nand  many   spaces",
    "12345 67.89 1,000,000 3.14159",
    "café naïve résumé Crème Brûlée",
    "cafe\u0301 decomposed a\u0301\u0302\u0303 combining",
    "😀 emoji 👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "日本語のテキスト、中文文本。한국어",
    "don't won't I'm you're we've they'll she'd it's",
    "DON'T IT'S Y'ALL",
    "rock'n'roll ''quoted'' 'single' '",
    EOT,
    "before <|endoftext|> after",
    "<|startoftext|>start",
    "<|ENDOFTEXT|> upper <|StartOfText|>",
    "a <|endoftext|<|endoftext|>> b",
    "!!!???...,,,",
    "hello!world?yes!",
    "ΣΊΣΥΦΟΣ Σας ΟΔΟΣ",
    "İstanbul ﬁne ﬂow ǅ ΐ ẞ ß",
    "Ⅻ ² ½ ٣ ① ⁴",
    "zero\u200bwidth joiner\u200d BOM\ufeff end",
    "control\x00\x07\x1b chars\x7f",
    "nbsp\u00a0ideographic\u3000space\u2028line\u0085nel\x0bvt",
    "math: x² + y² = z², ∑∫√∞ ≠ ≈",
    "www.example.com/path?q=1&r=2 #hashtag @user",
    "trending on artstation, 8k, octane render, (masterpiece:1.2), [[detailed]], {a|b}",
    "Ünïcödé ÀÉÎÕÜ",
    "ไทย العربية עברית हिन्दी",
    "1girl, solo, long hair, looking at viewer",
    "supercalifragilisticexpialidocious" * 4,
    "a " * 75,
    "a " * 76,
    "the quick brown fox jumps over the lazy dog. " * 10,
    "!" * 100,
    "\U0001F600" * 40,
]

VARIANTS = ["sd1-vocab-merges", "sd2-vocab-merges", "sd1-tokenizer-json", "sd2-tokenizer-json", "sd2-v4-config", "tokenizer-json-only"]


def main():
    vocab, merges = clip_vocab()
    assert len(vocab) == 49408 and len(merges) == 48894
    work = tempfile.mkdtemp()
    try:
        def base(d):
            os.makedirs(d, exist_ok=True)
            json.dump({t: i for i, t in enumerate(vocab)}, open(os.path.join(d, "vocab.json"), "w"), ensure_ascii=False)
            open(os.path.join(d, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")

        folders = {}
        for name, pad in [("sd1-vocab-merges", EOT), ("sd2-vocab-merges", "!")]:
            d = os.path.join(work, name)
            base(d)
            config, special = legacy_config(pad)
            json.dump(config, open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)
            json.dump(special, open(os.path.join(d, "special_tokens_map.json"), "w"), indent=2)
            folders[name] = d
        d = os.path.join(work, "sd2-v4-config")
        base(d)
        json.dump(v4_config("!"), open(os.path.join(d, "tokenizer_config.json"), "w"), indent=2)
        folders["sd2-v4-config"] = d
        for src, dst in [("sd1-vocab-merges", "sd1-tokenizer-json"), ("sd2-vocab-merges", "sd2-tokenizer-json")]:
            d = os.path.join(work, dst)
            CLIPTokenizer.from_pretrained(folders[src]).save_pretrained(d)
            folders[dst] = d
        d = os.path.join(work, "tokenizer-json-only")
        os.makedirs(d)
        shutil.copy(os.path.join(folders["sd2-tokenizer-json"], "tokenizer.json"), d)
        folders["tokenizer-json-only"] = d

        expected = {"transformers": transformers.__version__, "prompts": PROMPTS, "variants": {}}
        for name in VARIANTS:
            d = folders[name]
            tok = CLIPTokenizer.from_pretrained(d)
            # Without tokenizer_config.json transformers has no model_max_length (1e30) and the
            # pipeline could not pad; 77 is what the text encoder takes.
            max_length = tok.model_max_length if tok.model_max_length < 10**6 else 77
            ids = []
            for p in PROMPTS:
                enc = tok(p, padding="max_length", max_length=max_length, truncation=True)
                assert len(enc.input_ids) == max_length
                n = sum(enc.attention_mask)
                assert all(i == tok.pad_token_id for i in enc.input_ids[n:])
                ids.append(enc.input_ids[:n])
            expected["variants"][name] = {"pad_id": tok.pad_token_id, "max_length": max_length, "ids": ids}

            out = os.path.join(ROOT, name)
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            for f in ["tokenizer_config.json", "special_tokens_map.json"]:
                if os.path.exists(os.path.join(d, f)):
                    shutil.copy(os.path.join(d, f), out)
            if os.path.exists(os.path.join(d, "tokenizer.json")):
                tj = json.load(open(os.path.join(d, "tokenizer.json")))
                tj["model"]["vocab"] = {}
                tj["model"]["merges"] = []
                json.dump(tj, open(os.path.join(out, "tokenizer.json"), "w"), indent=1, ensure_ascii=False)
        with open(os.path.join(ROOT, "expected.json"), "w") as f:
            json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
