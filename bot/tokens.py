"""Exact, offline token counting with OpenAI's own tokenizer (tiktoken) and vocabularies shipped here.

`tiktoken.get_encoding` downloads its vocabulary file on first use (and caches it in a temp folder),
which a bot behind an egress proxy, or CI without internet, cannot do. So the two vocabularies that
fine-tunable models use are vendored in `bot/vocab/` (see its README for where they come from and
how to refresh them), checked against the same sha256 that tiktoken itself expects, and turned into
a `tiktoken.Encoding` here with tiktoken's official split pattern and special tokens. No code path
of tiktoken's loader (network, cache folder) is ever taken.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import tiktoken

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True)
class _Spec:
    sha256: str  # of the decompressed .tiktoken file: tiktoken_ext/openai_public.py's expected_hash
    pat_str: str
    special_tokens: dict[str, int]


# Copied from tiktoken 0.14.0's tiktoken_ext/openai_public.py (MIT, bot/vocab/LICENSE): a different
# pattern or special-token table would give different ids, so these must match tiktoken's exactly.
_SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Spec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            ENDOFTEXT: 100257,
            FIM_PREFIX: 100258,
            FIM_MIDDLE: 100259,
            FIM_SUFFIX: 100260,
            ENDOFPROMPT: 100276,
        },
    ),
}
ENCODINGS = tuple(_SPECS)

# Base-model prefixes, most specific first (from tiktoken/model.py, FACTS-interactive §13).
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4-mini", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
    ("babbage-002", "cl100k_base"),
)
# Every model OpenAI fine-tunes today uses o200k_base, and a new one will most likely too.
DEFAULT_ENCODING = "o200k_base"


class VocabularyError(RuntimeError):
    """The vendored vocabulary is missing or is not the file tiktoken expects (a broken install)."""


def base_model(model: str) -> str:
    """`ft:gpt-4o-mini-2024-07-18:org:suffix:id` (or a checkpoint of one) → `gpt-4o-mini-2024-07-18`."""
    model = model.strip()
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


def encoding_name_for_model(model: str) -> str:
    """o200k_base or cl100k_base; a fine-tuned model is tokenized like its base model."""
    base = base_model(model).lower()
    for prefix, name in _PREFIXES:
        if base.startswith(prefix):
            return name
    return DEFAULT_ENCODING


def _load_ranks(name: str, spec: _Spec) -> dict[bytes, int]:
    path = VOCAB_DIR / f"{name}.tiktoken.gz"
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise VocabularyError(f"cannot read the vendored vocabulary {path}: {error}") from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise VocabularyError(f"{path} has sha256 {digest}, expected {spec.sha256}: reinstall the package")
    # The format tiktoken's load_tiktoken_bpe reads: one "<base64 token> <rank>" per line.
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, built once per process from the vendored file (~0.5 s for o200k_base)."""
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}; known: {', '.join(ENCODINGS)}")
    return tiktoken.Encoding(
        name,
        pat_str=spec.pat_str,
        mergeable_ranks=_load_ranks(name, spec),
        special_tokens=spec.special_tokens,
    )
