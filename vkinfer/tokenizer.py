"""Tokenizers built from GGUF metadata, on Hugging Face `tokenizers`, tokenizing as llama.cpp does.

* `gpt2`: byte-level BPE (tokens + merges), words split by the pre-tokenizer regex that
  `tokenizer.ggml.pre` names.
* `gemma4`: BPE over raw UTF-8 characters with spaces written as "▁", the text split only into
  runs of newlines and runs of everything else, and `<0xXX>` tokens for bytes no merge covers.

Special tokens are cut out of the text before BPE, longest first, as llama.cpp does: USER_DEFINED
tokens always, CONTROL and UNKNOWN ones only when `encode(..., special=True)`.
Decoding goes through bytes, so a character split over several tokens comes out whole;
`StreamDecoder` holds back an incomplete UTF-8 sequence until its last byte arrives.
"""
import codecs
import logging
import re
from functools import lru_cache

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from .errors import BadArgument, VkInferError

log = logging.getLogger(__name__)

SUPPORTED_MODELS = ("gpt2", "gemma4")
ADD_BOS_DEFAULT = {"gpt2": False, "gemma4": True}

# tokenizer.ggml.token_type values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer names whose words are split by the GPT-2 regex (HF's ByteLevel regex).
GPT2_REGEX_PRE = ("gpt-2", "mpt", "olmo", "default")

_SURROGATE = re.compile("[\ud800-\udfff]")

# Texts of end-of-turn tokens used by common chat templates: the one list generation stops on
# (with EOS and EOT), for the engine's loop and the chat.
END_OF_TURN_TEXTS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|eom_id|>", "<turn|>",
                     "<|endoftext|>", "<|end|>")


@lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict:
    """GPT-2's byte <-> printable character table, as char -> byte: printable Latin-1 bytes stand
    for themselves, the others are shifted to U+0100 and up in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(0x100 + shifted)] = b
            shifted += 1
    return table


class Tokenizer:
    """Build with from_gguf / from_metadata. The constructor takes the metadata values: merges
    as "left right" strings (gemma4 without merges ranks them from scores)."""

    def __init__(self, model: str, tokens: list, token_types: list, merges: list = None, *,
                 scores: list = None, pre: str = None, bos_id=None, eos_id=None, eot_id=None,
                 add_bos=None, name: str = "tokenizer"):
        if model not in SUPPORTED_MODELS:
            raise VkInferError(f"{name}: tokenizer model '{model}' is not supported "
                               f"(supported: {', '.join(SUPPORTED_MODELS)})")
        if not tokens:
            raise VkInferError(f"{name}: tokenizer.ggml.tokens is empty")
        for key, values in (("token_type", token_types), ("scores", scores)):
            if values is not None and len(values) != len(tokens):
                raise VkInferError(f"{name}: tokenizer.ggml.{key} has {len(values)} entries "
                                   f"for {len(tokens)} tokens")
        for key, tid in (("bos", bos_id), ("eos", eos_id), ("eot", eot_id)):
            if tid is not None and not 0 <= int(tid) < len(tokens):
                raise VkInferError(f"{name}: tokenizer.ggml.{key}_token_id = {tid} is outside the "
                                   f"vocabulary (0..{len(tokens) - 1})")
        self.model, self.name = model, name
        self.pre = pre
        self.tokens = tokens
        self.token_types = token_types
        self.n_tokens = len(tokens)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.eos_id = None if eos_id is None else int(eos_id)
        self.add_bos = ADD_BOS_DEFAULT[model] if add_bos is None else bool(add_bos)
        # Later duplicates win, as in llama.cpp's token_to_id map.
        self._ids = {text: i for i, text in enumerate(tokens)}
        self.eog_ids = self._end_of_generation_ids(eot_id)
        if merges is not None:
            pairs = _split_merges(merges, name)
        elif model == "gemma4" and scores is not None:
            pairs = _merges_from_scores(tokens, scores, token_types)
        else:
            raise VkInferError(f"{name}: tokenizer model '{model}' needs tokenizer.ggml.merges"
                               + (" or tokenizer.ggml.scores" if model == "gemma4" else "")
                               + ", which this file does not have")
        try:
            bpe = models.BPE(self._ids, pairs, byte_fallback=(model == "gemma4"))
        except Exception as e:   # tokenizers raises a bare Exception for a merge of unknown tokens
            raise VkInferError(f"{name}: the merges do not fit the vocabulary ({e})") from None
        self._hf = HFTokenizer(bpe)
        if model == "gpt2":
            if pre not in GPT2_REGEX_PRE and pre is not None:
                log.warning("%s: unknown pre-tokenizer '%s'; splitting words with the GPT-2 regex",
                            name, pre)
            self._hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                              use_regex=True)
        self._pieces = self._piece_bytes()
        # Cut out longest first (llama.cpp sorts its special-token cache by length, descending).
        by_length = sorted(range(self.n_tokens), key=lambda i: -len(tokens[i]))
        self._always_split = [i for i in by_length if token_types[i] == USER_DEFINED and tokens[i]]
        self._special_split = [i for i in by_length
                               if token_types[i] in (CONTROL, UNKNOWN, USER_DEFINED) and tokens[i]]

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, path) -> "Tokenizer":
        from .gguf import open_gguf
        return cls.from_metadata(open_gguf(path, weights=False))

    @classmethod
    def from_metadata(cls, f) -> "Tokenizer":
        """From an open GGUFFile; a value of the wrong GGUF type is an error naming the key."""
        name = f.path.name
        model = f.value("tokenizer.ggml.model", "str", None)
        if model is None:
            raise VkInferError(f"{name}: no tokenizer in this file (missing tokenizer.ggml.model)")
        tokens = f.value("tokenizer.ggml.tokens", "[str]")
        types = f.value("tokenizer.ggml.token_type", "[int]", None)
        if types is None:
            types = [NORMAL] * len(tokens)
        key = "tokenizer.ggml."
        return cls(model, tokens, types, f.value(key + "merges", "[str]", None),
                   scores=f.value(key + "scores", "[float]", None), pre=f.value(key + "pre", "str", None),
                   bos_id=f.value(key + "bos_token_id", "int", None),
                   eos_id=f.value(key + "eos_token_id", "int", None),
                   eot_id=f.value(key + "eot_token_id", "int", None),
                   add_bos=f.value(key + "add_bos_token", "bool", None), name=name)

    def _end_of_generation_ids(self, eot_id) -> frozenset:
        ids = {i for i in (self.eos_id, eot_id) if i is not None}
        for text in END_OF_TURN_TEXTS:
            i = self._ids.get(text)
            if i is not None and self.token_types[i] == CONTROL:
                ids.add(i)
        return frozenset(int(i) for i in ids)

    def _piece_bytes(self) -> list:
        """The bytes each token decodes to (llama.cpp's token_to_piece with special=True)."""
        pieces = []
        if self.model == "gpt2":
            alphabet = _byte_level_alphabet()
            for text, ttype in zip(self.tokens, self.token_types):
                if ttype in (NORMAL, BYTE):
                    pieces.append(_byte_level_decode(text, alphabet))
                else:
                    pieces.append(text.encode("utf-8"))
        else:
            for text, ttype in zip(self.tokens, self.token_types):
                if ttype == BYTE:
                    pieces.append(_byte_token(text, len(pieces), self.name))
                elif ttype == NORMAL:
                    pieces.append(text.replace("▁", " ").encode("utf-8"))
                else:
                    pieces.append(text.encode("utf-8"))
        return pieces

    # ---- encoding ----------------------------------------------------------------------------
    def encode(self, text: str, add_bos=None, special: bool = False) -> list:
        """Token ids of `text`. add_bos None follows the file (tok.add_bos). special=True turns
        control tokens written in the text ("<|im_end|>", "<start_of_turn>") into their ids;
        special=False tokenizes them as plain text."""
        if not isinstance(text, str):
            raise BadArgument(f"encode: takes a str, not {type(text).__name__}")
        bad = _SURROGATE.search(text)
        if bad:
            raise BadArgument(f"encode: the text holds a lone surrogate (U+{ord(bad.group()):04X}) at "
                              f"character {bad.start()}, which is not Unicode; decode bytes that may "
                              "not be UTF-8 with errors='replace'")
        if add_bos is None:
            add_bos = self.add_bos
        ids = []
        if add_bos:
            if self.bos_id is None:
                raise VkInferError("encode: add_bos requested but this tokenizer has no BOS token "
                                   "(no tokenizer.ggml.bos_token_id)")
            ids.append(self.bos_id)
        specials = self._special_split if special else self._always_split
        for fragment in self._partition(text, specials):
            if isinstance(fragment, int):
                ids.append(fragment)
            else:
                ids.extend(self._encode_plain(fragment))
        return ids

    def _partition(self, text: str, special_ids: list) -> list:
        """Split text into str fragments and special-token ids: each token in turn (longest
        first) is cut out of every remaining text fragment."""
        fragments = [text] if text else []
        for tid in special_ids:
            token = self.tokens[tid]
            if not any(isinstance(f, str) and token in f for f in fragments):
                continue
            split = []
            for f in fragments:
                if isinstance(f, str) and token in f:
                    parts = f.split(token)
                    for k, part in enumerate(parts):
                        if k:
                            split.append(tid)
                        if part:
                            split.append(part)
                else:
                    split.append(f)
            fragments = split
        return fragments

    def _encode_plain(self, text: str) -> list:
        if self.model == "gpt2":
            return self._hf.encode(text, add_special_tokens=False).ids
        ids = []
        for run in re.findall(r"[^\n]+|\n+", text.replace(" ", "▁")):
            # A run of newlines that is itself a token stays whole (llama.cpp's gemma4 rule).
            whole = self._ids.get(run) if run[0] == "\n" else None
            if whole is not None:
                ids.append(whole)
            else:
                ids.extend(self._hf.encode(run, add_special_tokens=False).ids)
        return ids

    # ---- decoding ----------------------------------------------------------------------------
    def _check_id(self, tid: int, what: str):
        if not 0 <= tid < self.n_tokens:
            raise BadArgument(f"{what}: token id {tid} is outside the vocabulary "
                             f"(0..{self.n_tokens - 1})")

    def _piece(self, tid: int, skip_special: bool) -> bytes:
        self._check_id(tid, "decode")
        if skip_special and self.token_types[tid] in (CONTROL, UNKNOWN):
            return b""
        return self._pieces[tid]

    def decode_bytes(self, ids, skip_special: bool = False) -> bytes:
        return b"".join(self._piece(int(t), skip_special) for t in ids)

    def decode(self, ids, skip_special: bool = False) -> str:
        """Text of `ids`; invalid UTF-8 becomes U+FFFD. skip_special drops control tokens."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors="replace")

    def stream(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)

    # ---- lookups -----------------------------------------------------------------------------
    def token_to_id(self, text: str):
        return self._ids.get(text)

    def id_to_piece(self, tid: int) -> str:
        """The token's text as stored in the vocabulary ("Ġhello", "▁hello", "<0x0A>"): the
        inverse of token_to_id. decode([tid]) gives the text it stands for."""
        self._check_id(tid, "id_to_piece")
        return self.tokens[tid]

    def is_control(self, tid: int) -> bool:
        self._check_id(tid, "is_control")
        return self.token_types[tid] == CONTROL

    def is_eog(self, tid: int) -> bool:
        """End of generation: EOS, EOT, or a control end-of-turn token like <|im_end|>."""
        return tid in self.eog_ids

    def __repr__(self):
        return (f"Tokenizer(model={self.model!r}, n_tokens={self.n_tokens}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, add_bos={self.add_bos})")


class StreamDecoder:
    """Token-by-token detokenizer: push(id) returns the complete UTF-8 text not returned yet and
    holds back a trailing incomplete multi-byte sequence; flush() returns what is left (an
    unfinished sequence as U+FFFD). Joining all returns equals Tokenizer.decode(all ids)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, tid: int) -> str:
        return self._utf8.decode(self.tokenizer._piece(int(tid), self.skip_special))

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def _split_merges(merges: list, name: str) -> list:
    """'left right' -> (left, right); the separator is the first space after the first
    character, so a merge whose left part is a space still splits right."""
    pairs = []
    for m in merges:
        k = m.find(" ", 1)
        if k < 0:
            raise VkInferError(f"{name}: malformed merge {m!r} in tokenizer.ggml.merges")
        pairs.append((m[:k], m[k + 1:]))
    return pairs


def _merges_from_scores(tokens: list, scores: list, token_types: list) -> list:
    """Merges for a vocabulary without a merge list: every split of a normal token into two
    normal tokens, ranked by the merged token's score (highest first), then by its id (BPE
    vocabularies number tokens in merge order), then by the ids of the parts."""
    ids = {text: i for i, text in enumerate(tokens) if token_types[i] == NORMAL}
    found = []
    for i, text in enumerate(tokens):
        if token_types[i] != NORMAL:
            continue
        for k in range(1, len(text)):
            left = ids.get(text[:k])
            right = ids.get(text[k:]) if left is not None else None
            if right is not None:
                found.append((-scores[i], i, left, right))
    found.sort()
    return [(tokens[left], tokens[right]) for _, _, left, right in found]


def _byte_token(text: str, tid: int, name: str) -> bytes:
    """The byte a BYTE token ("<0x0A>") stands for."""
    hex_digits = "0123456789abcdefABCDEF"
    if len(text) == 6 and text[:3] == "<0x" and text[5] == ">" and all(c in hex_digits for c in text[3:5]):
        return bytes([int(text[3:5], 16)])
    raise VkInferError(f"{name}: token {tid} {text!r} has type BYTE but is not written <0xXX>")


def _byte_level_decode(text: str, alphabet: dict) -> bytes:
    """Bytes of a byte-level token; a character outside GPT-2's alphabet (none in a well-formed
    vocabulary) stands for its own UTF-8."""
    return b"".join(bytes([alphabet[c]]) if c in alphabet else c.encode("utf-8") for c in text)
