"""Log-probabilities of a generated text on the transformers backend: one teacher-forced pass over it."""

from __future__ import annotations

from ..errors import GenerationFailed


def score_text(backend, prompt_ids: list[int], text: str, top: int) -> list[dict]:
    """Each token of a generated `text` with its log-probability and the `top` most likely tokens there,
    from the model's logits by one teacher-forced pass (as the llama_cpp backend does). A token's string
    is what it adds to the decoded text (a character split over tokens comes with the token that ends
    it), so the strings concatenate to the text."""
    torch, model, tokenizer = backend.torch, backend.model, backend.tokenizer
    if not text or not prompt_ids:
        return []
    completion = tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        ids = torch.tensor([prompt_ids + completion], device=model.device)
        with torch.inference_mode():
            logits = model(ids).logits[0, len(prompt_ids) - 1:-1].float()
            scores = torch.log_softmax(logits, dim=-1).cpu().numpy()
    except Exception as exc:
        raise GenerationFailed(f"transformers failed while scoring the text: {exc}") from exc
    decode = tokenizer.decode
    out, done = [], ""
    for k, token in enumerate(completion):
        upto = decode(completion[:k + 1])
        piece = "" if upto.endswith("\ufffd") and k < len(completion) - 1 else upto[len(done):]
        done += piece
        row = scores[k]
        best = row.argsort()[::-1][:top] if top else []
        out.append({"token": piece, "logprob": float(row[token]), "bytes": list(piece.encode("utf-8")),
                    "top_logprobs": [{"token": decode([int(t)]), "logprob": float(row[t]),
                                      "bytes": list(decode([int(t)]).encode("utf-8"))} for t in best]})
    if out and done != text:  # the tokenizer does not give the text back exactly: the last token takes up
        out[-1]["token"] += text[len(done):] if text.startswith(done) else ""
    return out
