"""Word-level report tokenizer for the radiology report generation example.

Reports are cleaned in the style common to IU X-Ray report generation work:
lower case, punctuation other than sentence-ending periods removed, and each
period kept as its own ``.`` token. The vocabulary contains the words that occur
at least ``min_count`` times in the training reports plus four special tokens.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD = "<pad>"
BOS = "<bos>"
EOS = "<eos>"
UNK = "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))

_SENTENCE_SPLIT = re.compile(r"\.+(?:\s+|$)")
_NON_WORD = re.compile(r"[^a-z0-9\s]")
_SPACES = re.compile(r"\s+")


def clean_report(text: str) -> str:
    """Normalize a report to lower-case words with `` . `` between sentences.

    Args:
        text: Free-text report, for example the findings section.

    Returns:
        The cleaned report, with words separated by single spaces and every
        sentence followed by a ``.`` token. An empty or punctuation-only
        report returns ``""``.
    """
    sentences = []
    for sentence in _SENTENCE_SPLIT.split(text.lower()):
        # Hyphens and slashes join words ("right-sided", "and/or"), so they
        # become spaces. Any other punctuation is dropped.
        sentence = sentence.replace("-", " ").replace("/", " ")
        sentence = _NON_WORD.sub("", sentence)
        sentence = _SPACES.sub(" ", sentence).strip()
        if sentence:
            sentences.append(sentence + " .")
    return " ".join(sentences)


class Tokenizer:
    """Map cleaned report words to integer ids and back.

    Ids 0 to 3 are ``<pad>``, ``<bos>``, ``<eos>`` and ``<unk>``.

    Args:
        vocab: Token strings in id order. The first four must be
            ``SPECIAL_TOKENS``.
    """

    def __init__(self, vocab: Sequence[str]):
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"vocab must start with {SPECIAL_TOKENS}, got {tuple(vocab[:4])}; "
                "build it with Tokenizer.build"
            )
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab contains duplicate tokens; each token must appear once")
        self.vocab = vocab
        self.token_to_id = {token: i for i, token in enumerate(vocab)}

    @classmethod
    def build(cls, reports: Iterable[str], min_count: int = 3) -> Tokenizer:
        """Build a vocabulary from training reports.

        Args:
            reports: Training reports, raw or already cleaned.
            min_count: Minimum number of occurrences for a word to get its own
                id. Rarer words map to ``<unk>``.

        Returns:
            A tokenizer whose words are sorted by decreasing count, ties by
            alphabetical order, so the same reports always give the same ids.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")

        counts = collections.Counter()
        for report in reports:
            counts.update(clean_report(report).split())

        words = [word for word, count in counts.items() if count >= min_count]
        words.sort(key=lambda word: (-counts[word], word))
        return cls(list(SPECIAL_TOKENS) + words)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included."""
        return len(self.vocab)

    def encode(self, text: str, max_length: int) -> np.ndarray:
        """Encode one report as ``<bos> words <eos>`` padded to ``max_length``.

        Args:
            text: Raw or cleaned report.
            max_length: Sequence length, ``<bos>`` and ``<eos>`` included.
                Longer reports are truncated to ``max_length - 2`` words.

        Returns:
            int32 array of shape ``[max_length]``.
        """
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 to hold <bos>, a word and <eos>, got {max_length}")

        words = clean_report(text).split()[: max_length - 2]
        ids = [BOS_ID] + [self.token_to_id.get(word, UNK_ID) for word in words] + [EOS_ID]

        encoded = np.full(max_length, PAD_ID, dtype=np.int32)
        encoded[: len(ids)] = ids
        return encoded

    def encode_batch(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """Encode reports into an int32 array of shape ``[len(texts), max_length]``."""
        if not texts:
            return np.zeros((0, max_length), dtype=np.int32)
        return np.stack([self.encode(text, max_length) for text in texts])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Decode ids to text, stopping at the first ``<eos>``.

        ``<bos>`` and ``<pad>`` are skipped; ``<unk>`` is kept as a word.
        """
        words = []
        for token_id in np.asarray(ids).tolist():
            if token_id == EOS_ID:
                break
            if token_id in (PAD_ID, BOS_ID):
                continue
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary of size {self.vocab_size}")
            words.append(self.vocab[token_id])
        return " ".join(words)

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        """Decode each row of a ``[N, L]`` id array."""
        return [self.decode(row) for row in np.asarray(ids)]
