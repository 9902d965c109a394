"""The other tasks against what they are built on: zero-shot classify vs embed, NER vs raw spaCy, rerank vs embed.

One process, sides interleaved (ABBA), the runtime's embedding cache emptied before every run of either
side, so no side is served from the other's work:
- zero-shot `classify` (all-MiniLM-L6-v2, 3 labels) on N mixed texts vs `embed` on the same texts;
  the same through the magics (`%classify --labels` vs `%embed`) in an IPython shell;
- `ner` (en-core-web-sm) vs raw spaCy `nlp.pipe` over the same texts, twice: against the pipeline as
  `spacy.load` gives it (every component runs) and against `spacy.load(..., enable=["ner"])` (only
  what NER needs, which is what the runtime loads); entities must be equal, else the ratio does not count;
- `rerank` of 1 query x D documents vs `embed` of the D documents.

    python bench/tasks.py            # 3,000 texts, 1,000 documents, 3 runs per side
    python bench/tasks.py --smoke    # 24 texts, 1 run
"""

from __future__ import annotations


from _common import MINILM, Row, interleaved, magic_shell, mixed_texts, parser, print_cpu, print_table, rate, threads

SPACY = "en-core-web-sm"
LABELS = ["sports", "politics", "technology"]


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=None, help="rows classified and NER-tagged (default 3,000)")
    p.add_argument("--documents", type=int, default=None, help="documents reranked (default 1,000)")
    p.add_argument("--no-magics", action="store_true", help="skip the rows measured through the magics")
    args = p.parse_args(argv)
    print_cpu()
    n = args.texts or (24 if args.smoke else 3_000)
    d = args.documents or (24 if args.smoke else 1_000)
    repeats = args.repeats or (1 if args.smoke else 3)
    nthreads = threads(args)

    import spacy
    import torch

    from universal_kernel import Runtime, RuntimeConfig

    torch.set_num_threads(nthreads)
    texts = mixed_texts(n, seed=1)
    documents = mixed_texts(d, seed=2)
    query = "How do teams prepare for the next season?"
    rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads), reaper=False)
    rt.load(MINILM)
    rt.load(SPACY)
    cold = rt.embedding_cache._rows.clear  # a cold cache before every run: no side reuses the other's rows

    rows: list[Row] = []
    notes: list[str] = []

    # zero-shot classify vs embed ---------------------------------------------------------------
    def classify() -> float:
        cold()
        return rate(n, lambda: rt.classify(texts, MINILM, labels=LABELS, truncate=True))

    def embed() -> float:
        cold()
        return rate(n, lambda: rt.embed(texts, MINILM))

    got = interleaved({"classify": classify, "embed": embed}, repeats)
    rows.append(Row(f"classify zero-shot, {n:,} rows", "rt.classify", got["classify"], "rt.embed", got["embed"],
                    "rows/s", "ratio>=", 0.95))

    if not args.no_magics:
        import pandas as pd

        from IPython.utils.capture import capture_output

        shell = magic_shell(rt)
        shell.user_ns["bench_df"] = pd.DataFrame({"text": texts})

        def magic(line: str):
            with capture_output():  # the summary lines and progress bars
                return shell.run_line_magic(*line.split(" ", 1))

        def classify_magic() -> float:
            cold()
            return rate(n, lambda: magic(f"classify bench_df.text --labels {','.join(LABELS)} --truncate"))

        def embed_magic() -> float:
            cold()
            return rate(n, lambda: magic("embed bench_df.text"))

        got = interleaved({"%classify": classify_magic, "%embed": embed_magic}, repeats)
        rows.append(Row(f"%classify --labels, {n:,} rows", "%classify", got["%classify"], "%embed", got["%embed"],
                        "rows/s", "ratio>=", 0.95))

    # NER vs raw spaCy --------------------------------------------------------------------------
    path = str(rt.resolve(SPACY).path)
    full = spacy.load(path)
    narrow = spacy.load(path, enable=["ner"])

    def entities(docs) -> list:
        return [[(e.text, e.label_, e.start_char, e.end_char) for e in doc.ents] for doc in docs]

    ours_rows = rt.ner(texts, truncate=True).rows
    ours_entities = [[(e.text, e.label, e.start, e.end) for e in row] for row in ours_rows]
    agree_full = ours_entities == entities(full.pipe(texts))
    agree_narrow = ours_entities == entities(narrow.pipe(texts))
    got = interleaved({
        "ner": lambda: rate(n, lambda: rt.ner(texts, truncate=True)),
        "full": lambda: rate(n, lambda: entities(full.pipe(texts))),
        "narrow": lambda: rate(n, lambda: entities(narrow.pipe(texts))),
    }, repeats)
    rows.append(Row(f"ner, {n:,} rows", "rt.ner", got["ner"], "nlp.pipe (spacy.load)", got["full"], "rows/s",
                    "ratio>=", 0.95 if agree_full else float("inf")))
    rows.append(Row(f"ner, {n:,} rows", "rt.ner", got["ner"], "nlp.pipe (enable=[ner])", got["narrow"], "rows/s",
                    "ratio>=", 0.95 if agree_narrow else float("inf")))
    notes.append(f"entities equal to raw spaCy: full pipeline {'yes' if agree_full else 'NO'}, "
                 f"enable=['ner'] {'yes' if agree_narrow else 'NO'} (a NO makes that row's ratio not count)")

    # rerank vs embed ---------------------------------------------------------------------------
    def rerank() -> float:
        cold()
        return rate(d, lambda: rt.rerank(query, documents, MINILM, truncate=True))

    def embed_documents() -> float:
        cold()
        return rate(d, lambda: rt.embed(documents, MINILM))

    got = interleaved({"rerank": rerank, "embed": embed_documents}, repeats)
    rows.append(Row(f"rerank 1 x {d:,} documents", "rt.rerank", got["rerank"], "rt.embed", got["embed"],
                    "documents/s", "ratio>=", 0.95))

    notes.append(f"texts: bench/_common.mixed_texts ({n:,} rows, {d:,} documents; 10% repeat an earlier text, "
                 f"10% are paragraphs past MiniLM's 256 tokens, so classify and rerank run with truncate)")
    notes.append(f"runs per side: {repeats} (interleaved, after one unmeasured run each); threads: {nthreads}")
    print_table(f"Tasks on all-MiniLM-L6-v2 and {SPACY}", rows, notes)
    rt.close()
    return 0 if agree_full and agree_narrow else 1


if __name__ == "__main__":
    raise SystemExit(main())
