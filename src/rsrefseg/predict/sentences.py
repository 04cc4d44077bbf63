"""Sentences as the predictor takes them: refused when empty, truncated with a warning when too long."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence


class SentenceTruncatedWarning(UserWarning):
    """A sentence is longer than the text encoder's context; the tokens beyond it are dropped."""


def as_sentence_list(sentences: str | Sequence[str]) -> tuple[list[str], bool]:
    """``"s"`` or ``["s1", …]`` → (the list, whether a single string was given)."""
    if isinstance(sentences, str):
        return [sentences], True
    if not isinstance(sentences, Sequence) or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"sentences must be a string or a list of strings, got {sentences!r:.80}")
    if not sentences:
        raise ValueError("no sentences given; pass a string or a non-empty list of strings")
    return list(sentences), False


def clean_sentences(
    sentences: Sequence[str],
    *,
    count_tokens: Callable[[str], int],
    context_length: int,
    collapse_spaces: bool = True,
) -> list[str]:
    """Check each sentence and normalise its whitespace as the checkpoint's training data did.

    Args:
        sentences: the referring expressions.
        count_tokens: the text encoder's token count of a sentence (start / end tokens included).
        context_length: the text encoder's context; longer sentences are truncated by the tokenizer.
        collapse_spaces: collapse runs of whitespace to one space (``data.sentence_spaces=collapse``).

    Returns:
        The sentences, stripped (and collapsed).

    Raises:
        ValueError: a sentence is empty or whitespace only, naming its position.
    """
    out = []
    for index, sentence in enumerate(sentences):
        text = sentence.strip()
        if not text:
            raise ValueError(
                f"sentence {index} is empty ({sentence!r}); give a referring expression such as "
                "'the small gray vehicle left of the large building'"
            )
        if collapse_spaces:
            text = re.sub(r"\s+", " ", text)
        tokens = count_tokens(text)
        if tokens > context_length:
            warnings.warn(
                f"sentence {index} ({text[:60]!r}…) has {tokens} tokens but the text encoder reads "
                f"{context_length}: the last {tokens - context_length} tokens are dropped",
                SentenceTruncatedWarning,
                stacklevel=3,
            )
        out.append(text)
    return out
