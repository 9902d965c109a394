"""spaCy pipelines: named entities, and text categories where the pipeline has a text classifier.

Only the components a task reads are loaded and run. In en_core_web_sm 3.8 `ner` has its own
tok2vec (no listener) and the attribute_ruler sets no NORM, so NER alone gives the same entities
as the full pipeline in about a third of the time; tagger, parser, lemmatizer and the rest are
left out at load time (faster to load and smaller than keeping them disabled).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, InvalidRequest, LoadFailed, WrongTask
from ..model_spec import ModelSpec
from .base import Backend

#: factories that write doc.ents
ENTITY_FACTORIES = ("ner", "entity_ruler")
#: factories that write doc.cats
TEXTCAT_FACTORIES = ("textcat", "textcat_multilabel")
#: factories whose output other components may listen to
EMBEDDING_FACTORIES = ("tok2vec", "transformer", "curated_transformer")

SPACY_PIP = "pip install 'spacy>=3.7.5,<3.9'"


def import_spacy():
    try:
        import spacy
    except ImportError as exc:
        raise BackendUnavailable(f"the spacy backend needs spaCy installed: {SPACY_PIP}") from exc
    return spacy


def _listened_upstreams(node: Any) -> set[str]:
    """Names of the embedding components a component's model listens to ("*": any of them)."""
    found: set[str] = set()
    if isinstance(node, dict):
        if "Listener" in str(node.get("@architectures", "")):
            found.add(str(node.get("upstream", "*")))
        for value in node.values():
            found |= _listened_upstreams(value)
    return found


def components_for(config: dict, factories: tuple[str, ...]) -> list[str]:
    """The pipeline's components of these factories, with every component they depend on."""
    pipeline: list[str] = list(config["nlp"]["pipeline"])
    components: dict = config.get("components", {})

    def factory(name: str) -> str:
        return str(components.get(name, {}).get("factory", name))

    wanted = [n for n in pipeline if factory(n) in factories]
    needed = set(wanted)
    for name in wanted:
        if factory(name) == "entity_ruler":
            # Its patterns may match on tags, lemmas or dependencies: keep whatever runs before it.
            needed |= set(pipeline[: pipeline.index(name)])
        for upstream in _listened_upstreams(components.get(name, {})):
            needed |= {n for n in pipeline
                       if factory(n) in EMBEDDING_FACTORIES and upstream in ("*", n)}
    return [n for n in pipeline if n in needed]


class SpacyBackend(Backend):
    name = "spacy"
    device = "cpu"
    #: spaCy limits characters (nlp.max_length), not tokens
    max_input_tokens = None
    #: docs per nlp.pipe batch
    batch_size = 256

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        spacy = import_spacy()
        folder = Path(spec.path)
        try:
            config = spacy.util.load_config(folder / "config.cfg")
            self._entity_pipes = components_for(config, ENTITY_FACTORIES)
            self._textcat_pipes = components_for(config, TEXTCAT_FACTORIES)
            keep = set(self._entity_pipes) | set(self._textcat_pipes)
            exclude = [n for n in config["nlp"]["pipeline"] if n not in keep] if keep else []
            self.nlp = spacy.load(folder, exclude=exclude)
        except Exception as exc:
            raise LoadFailed(f"spaCy could not load {spec.id!r}: {exc}") from None
        # A component a pipeline's config marks disabled (en_core_web_sm: senter) stays out.
        self._entity_pipes = [n for n in self._entity_pipes if n in self.nlp.pipe_names]
        self._textcat_pipes = [n for n in self._textcat_pipes if n in self.nlp.pipe_names]

    def count_tokens(self, text: str) -> int:
        return len(self.nlp.tokenizer(text))

    def ner(self, texts: list[str], *, truncate: bool = False) -> tuple[list[list[dict]], int]:
        """Entities with spaCy's character offsets. spaCy's NER gives no per-entity probability
        (its transition parser commits to one analysis), so every score is 1.0."""
        if not self._entity_pipes:
            raise WrongTask(f"{self.spec.id!r} has no entity recognizer")
        results: list[list[dict]] = []
        tokens = 0
        for doc in self._run(texts, self._entity_pipes, truncate):
            tokens += len(doc)
            results.append([{"text": ent.text, "label": ent.label_, "start": ent.start_char,
                             "end": ent.end_char, "score": 1.0} for ent in doc.ents])
        return results, tokens

    def classify(self, texts: list[str], *, truncate: bool = False) -> tuple[list[dict[str, float]], int]:
        if not self._textcat_pipes:
            raise WrongTask(f"{self.spec.id!r} has no text classifier")
        results: list[dict[str, float]] = []
        tokens = 0
        for doc in self._run(texts, self._textcat_pipes, truncate):
            tokens += len(doc)
            ranked = sorted(doc.cats.items(), key=lambda item: item[1], reverse=True)
            results.append({label: float(score) for label, score in ranked})
        return results, tokens

    def _run(self, texts: list[str], enabled: list[str], truncate: bool):
        limit = self.nlp.max_length
        for i, text in enumerate(texts):
            if len(text) > limit and not truncate:
                raise InvalidRequest(f"input[{i}] has {len(text)} characters; {self.spec.id} takes at most "
                                     f"{limit} (ask for truncation)", param="input")
        # Cutting at max_length keeps offsets valid for the full text: they all lie before the cut.
        inputs = (text[:limit] for text in texts)
        disable = [n for n in self.nlp.pipe_names if n not in enabled]
        return self.nlp.pipe(inputs, batch_size=self.batch_size, disable=disable)

    def close(self) -> None:
        # The vocab's string store and the components' weights go with the Language object.
        self.nlp = None
        gc.collect()
