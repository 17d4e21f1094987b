"""CLIP's byte-level BPE vocabulary as CLIP builds it from its merges file (the open-clip-torch
wheel's `bpe_simple_vocab_16e6.txt.gz`, committed in tests/fixtures/clip-tokenizer): the 256
byte symbols, the same with `</w>`, one token per merge, then the start and end tokens. Shared
by the tokenizer, SD-pipeline and SD 1.5-shape scripts."""
import gzip
import os

GZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "clip-tokenizer",
                  "bpe_simple_vocab_16e6.txt.gz")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# CLIP's merges: the file's lines 1..48894 (49152 - 256 - 2).
CLIP_MERGES = 49152 - 256 - 2


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab(n_merges=CLIP_MERGES):
    """(vocab, merges) with the first `n_merges` merges (all of CLIP's by default: 49408 tokens)."""
    lines = gzip.open(GZ).read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + n_merges]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [SOT, EOT]
    return vocab, merges
