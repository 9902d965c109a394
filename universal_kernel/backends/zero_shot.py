"""Zero-shot labels on a chat model: the probability of each given label as the model's answer.

Both generation backends ask in the same words (`classification_messages`) and score the same way, so that
their label probabilities are comparable. A label's score is the sum of its tokens' log-probabilities after
the prompt (teacher forcing); the softmax over the labels is the exact distribution of a decode constrained
to the labels. A label is tokenised together with the prompt and its tokens are the tail: the prompt's last
token and the label's first can merge differently than each alone.

What differs between backends is how a prompt is run once and each label continued from it: a backend
offers that as `score_continuations`, and the few tokenizer calls below (`LabelScorer`).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidRequest
from .base import shared_prefix_length


def classification_messages(text: str, labels: list[str]) -> list[dict]:
    """The chat that asks a generation model to pick one label for `text`."""
    return [
        {"role": "system",
         "content": f"Classify the text. Answer with exactly one of these labels: {', '.join(labels)}."},
        {"role": "user", "content": text},
    ]


def checked_labels(labels: list[str]) -> list[str]:
    """The labels of a zero-shot request, refused when there are none, when one is empty or repeated."""
    if isinstance(labels, str) or not labels:
        raise InvalidRequest("give at least one label", param="labels")
    labels = list(labels)
    if not all(isinstance(label, str) and label.strip() for label in labels):
        raise InvalidRequest("every label must be a non-empty string", param="labels")
    if len(set(labels)) != len(labels):
        raise InvalidRequest("the labels must differ from one another", param="labels")
    return labels


def label_probabilities(labels: list[str], logprobs: list[float]) -> dict[str, float]:
    """Softmax over each label's total log-probability: {label: probability}, best first (ties in label order)."""
    totals = np.asarray(logprobs, dtype=np.float64)
    weights = np.exp(totals - totals.max())
    probabilities = weights / weights.sum()
    order = sorted(range(len(labels)), key=lambda i: -probabilities[i])
    return {labels[i]: float(probabilities[i]) for i in order}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class LabelScorer:
    """Zero-shot `classify_labels` for a generation backend (mixed into its `Backend` class).

    The backend provides `classification_prompt(text, labels)` (the chat prompt, assistant turn opened),
    `prompt_tokens(prompt)` (a prompt's tokens as `generate` makes them), `text_tokens(text)` and
    `text_of(tokens)` (an input's own tokens, and tokens back to text without a cut character, for
    truncation), `token_limit` (the most tokens a prompt and label may have; None: no limit known, and
    `limit_holder` saying whose it is) and `score_continuations`.
    """

    token_limit: int | None = None
    limit_holder = "the model"

    def score_continuations(self, shared: list[int], continuations: list[list[int]]) -> list[float]:
        """Each continuation's total log-probability after the prompt `shared`: its first token's from the
        prompt's last logits, each next token's after the continuation so far. Runs the prompt once."""
        raise NotImplementedError

    def label_tokens(self, text: str, labels: list[str], *, truncate: bool):
        """(prompt tokens, tokens shared by the prompt and every prompt+label, each label's tokens after those).
        With `truncate`, a text too long for the limit is cut from its end until all fits."""
        while True:
            prompt = self.classification_prompt(text, labels)
            prompt_tokens = self.prompt_tokens(prompt)
            joined = [self.prompt_tokens(prompt + label) for label in labels]
            shared = min(shared_prefix_length(prompt_tokens, tokens) for tokens in joined)
            needed = max(len(tokens) for tokens in joined)
            excess = needed - self.token_limit if self.token_limit is not None else 0
            if excess <= 0:
                label_tokens = [tokens[shared:] for tokens in joined]
                if not all(label_tokens):
                    raise InvalidRequest("a label adds no token to the prompt", param="labels")
                return prompt_tokens, prompt_tokens[:shared], label_tokens
            text_tokens = self.text_tokens(text) if text else []
            if not text_tokens:
                raise InvalidRequest(f"the labels alone need {needed} tokens; {self.limit_holder} holds "
                                     f"{self.token_limit}", param="labels")
            if not truncate:
                raise InvalidRequest(f"an input needs {needed} tokens with its prompt and longest label; "
                                     f"{self.limit_holder} holds {self.token_limit} (truncate cuts it to fit)",
                                     param="input")
            kept = text_tokens[: max(len(text_tokens) - excess, 0)]
            shorter = self.text_of(kept) if kept else ""
            text = shorter if len(shorter) < len(text) else text[:-1]  # always shorter: the loop ends

    def classify_labels(self, texts: list[str], labels: list[str], *,
                        truncate: bool = False) -> tuple[list[dict[str, float]], int]:
        """Each label's probability as the answer of the chat in `classification_messages`, per text; and the
        prompt token count."""
        labels = checked_labels(labels)
        results: list[dict[str, float]] = []
        prompt_token_count = 0
        for text in texts:
            prompt_tokens, shared, continuations = self.label_tokens(text, labels, truncate=truncate)
            prompt_token_count += len(prompt_tokens)
            results.append(label_probabilities(labels, self.score_continuations(shared, continuations)))
        return results, prompt_token_count
