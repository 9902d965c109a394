"""OCR and anomaly detection against what they are built on: raw RapidOCR, scikit-learn's pipeline called directly.

One process, sides interleaved (ABBA):
- OCR of P rendered pages (Pillow's default font at 28 px, about ten lines of words per 1240x1754 page):
  `rt.ocr(arrays)`, `rt.ocr(PNG bytes)` and `%ocr` on a list of the arrays vs `rapidocr.RapidOCR`
  constructed as the runtime's backend constructs it (the same ONNX files from rapidocr's wheel, the same
  onnxruntime thread settings) and called on the same images (arrays turned to BGR, as a user must; the
  PNG bytes as they are). Texts (lines ordered top to bottom) must be equal, else the ratio does not count;
- anomaly detection on N x 10 numbers (gaussian, with planted outliers): `%anomaly df` (fit and score in
  one go) and `rt.anomaly_fit` + `rt.anomaly_score` vs `make_pipeline(StandardScaler(),
  IsolationForest(n_estimators=200, random_state=0)).fit(X)` then `.score_samples(X)`; the order of the
  scores must agree (and the planted rows be flagged), else the ratio does not count. Detectors live in a
  temporary folder and are deleted after each run.

    python bench/ocr_anomaly.py            # 20 pages, 100,000 rows, 3 runs per side
    python bench/ocr_anomaly.py --smoke    # 2 pages, 2,000 rows, 1 run
"""

from __future__ import annotations

import io
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import _WORDS, Row, interleaved, magic_shell, parser, print_cpu, print_table, rate, threads

OCR = "rapidocr"
WIDTH, HEIGHT = 1240, 1754  # A5 at 210 dpi, about
FONT_SIZE = 28
LINES_PER_PAGE = 10
COLUMNS = 10
PLANTED = 20  # outlier rows planted in the anomaly data


# Inputs ----------------------------------------------------------------------------------------------
def render_pages(n: int, seed: int = 0, size: tuple[int, int] = (WIDTH, HEIGHT),
                 lines: int = LINES_PER_PAGE) -> list[np.ndarray]:
    """`n` deterministic pages: RGB uint8, HxWx3, `lines` lines of 3-8 words (some numbers) each."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(seed)
    font = ImageFont.load_default(size=FONT_SIZE)
    pages = []
    for number in range(n):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        y = 120
        draw.text((100, y), f"Page {number + 1}: {rng.choice(_WORDS).capitalize()} {rng.choice(_WORDS)}",
                  fill="black", font=font)
        for _ in range(lines - 1):
            y += rng.randint(90, 140)
            words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 8))]
            if rng.random() < 0.4:
                words.append(f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}")
            draw.text((100 + rng.randint(0, 120), y), " ".join(words), fill="black", font=font)
        pages.append(np.array(image))
    return pages


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def anomaly_frame(n: int, seed: int = 0):
    """`n` x 10 gaussian numbers in mixed units, `PLANTED` rows pushed far out; (frame, planted positions)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    matrix = rng.normal(size=(n, COLUMNS)) * np.linspace(1, 100, COLUMNS) + np.arange(COLUMNS) * 10
    planted = np.sort(rng.choice(n, size=min(PLANTED, n // 10), replace=False))
    matrix[planted] += rng.choice([-1, 1], size=(len(planted), COLUMNS)) * 8 * np.linspace(1, 100, COLUMNS)
    return pd.DataFrame(matrix, columns=[f"x{j}" for j in range(COLUMNS)]), planted


# The peers -------------------------------------------------------------------------------------------
def raw_rapidocr(folder: Path, nthreads: int):
    """RapidOCR as universal_kernel/backends/rapidocr_engine.py builds it: the same files, the same threads."""
    import logging

    from rapidocr import RapidOCR
    from rapidocr.utils.log import logger

    from universal_kernel.backends.rapidocr_engine import _model_file

    engine = RapidOCR(params={
        "Det.model_path": str(_model_file(folder, "*det*.onnx")),
        "Rec.model_path": str(_model_file(folder, "*rec*.onnx")),
        "Cls.model_path": str(_model_file(folder, "*cls*.onnx")),
        "Global.log_level": "error",
        "EngineConfig.onnxruntime.intra_op_num_threads": int(nthreads),
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    })
    logger.setLevel(logging.ERROR)
    return engine


def peer_text(out) -> str:
    """RapidOCR's lines, top to bottom (the order the runtime gives them)."""
    quads = [] if out.boxes is None else np.asarray(out.boxes, dtype=np.float64).reshape(-1, 4, 2)
    lines = sorted(zip(quads, out.txts or ()), key=lambda line: (line[0][:, 1].min(), line[0][:, 0].min()))
    return "\n".join(text for _, text in lines)


def sklearn_pipeline():
    """What tasks/anomaly.py fits for numeric columns, called directly."""
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), IsolationForest(n_estimators=200, random_state=0))


def main(argv=None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=None, help="pages read by OCR (default 20; --smoke: 2 third-size)")
    p.add_argument("--rows", type=int, default=None, help="rows of the anomaly data (default 100,000)")
    p.add_argument("--no-magics", action="store_true", help="skip the rows measured through the magics")
    args = p.parse_args(argv)
    print_cpu()
    n_pages = args.pages or (2 if args.smoke else 20)
    n_rows = args.rows or (2_000 if args.smoke else 100_000)
    repeats = args.repeats or (1 if args.smoke else 3)
    nthreads = threads(args)

    from IPython.utils.capture import capture_output

    from universal_kernel import Runtime, RuntimeConfig

    folder = Path(tempfile.mkdtemp(prefix="bench-anomaly-"))
    rt = Runtime(RuntimeConfig(keep_alive=-1, threads=nthreads, anomaly_folder=folder), reaper=False)
    rows: list[Row] = []
    notes: list[str] = []
    agreed = True
    shell = None if args.no_magics else magic_shell(rt)

    def magic(line: str):
        with capture_output():  # the summary line and progress bars
            return shell.run_line_magic(*line.split(" ", 1))

    try:
        # OCR ---------------------------------------------------------------------------------------
        # --smoke: third-size pages of 4 lines (a full page takes seconds on 2 cores)
        pages = render_pages(n_pages, size=(WIDTH // 3, HEIGHT // 3), lines=4) if args.smoke \
            else render_pages(n_pages)
        pngs = [png_bytes(page) for page in pages]
        rt.load(OCR)
        engine = raw_rapidocr(Path(rt.resolve(OCR).path), nthreads)

        def ours(images) -> list[str]:
            return [page.text for page in rt.ocr(images, OCR).pages]

        def peer_arrays() -> list[str]:
            return [peer_text(engine(np.ascontiguousarray(page[..., ::-1]))) for page in pages]

        def peer_pngs() -> list[str]:
            return [peer_text(engine(data)) for data in pngs]

        expected = peer_arrays()
        same_arrays = ours(pages) == expected
        same_pngs = ours(pngs) == peer_pngs() == expected
        got = interleaved({
            "rt.ocr arrays": lambda: rate(n_pages, lambda: ours(pages)),
            "RapidOCR arrays": lambda: rate(n_pages, peer_arrays),
            "rt.ocr png": lambda: rate(n_pages, lambda: ours(pngs)),
            "RapidOCR png": lambda: rate(n_pages, peer_pngs),
        }, repeats, warmup=False)
        rows.append(Row(f"ocr, {n_pages} pages (arrays)", "rt.ocr", got["rt.ocr arrays"], "RapidOCR()",
                        got["RapidOCR arrays"], "pages/s", "ratio>=", 0.95 if same_arrays else float("inf")))
        rows.append(Row(f"ocr, {n_pages} pages (PNG bytes)", "rt.ocr", got["rt.ocr png"], "RapidOCR()",
                        got["RapidOCR png"], "pages/s", "ratio>=", 0.95 if same_pngs else float("inf")))
        same_magic = True
        if shell is not None:
            shell.user_ns["bench_pages"] = pages
            same_magic = magic("ocr bench_pages").tolist() == expected
            got = interleaved({
                "%ocr": lambda: rate(n_pages, lambda: magic("ocr bench_pages")),
                "RapidOCR": lambda: rate(n_pages, peer_arrays),
            }, repeats, warmup=False)
            rows.append(Row(f"%ocr, {n_pages} pages (arrays)", "%ocr", got["%ocr"], "RapidOCR()", got["RapidOCR"],
                            "pages/s", "ratio>=", 0.95 if same_magic else float("inf")))
        agreed &= same_arrays and same_pngs and same_magic
        notes.append(f"OCR texts equal to raw RapidOCR (lines top to bottom): arrays {'yes' if same_arrays else 'NO'}, "
                     f"PNG bytes {'yes' if same_pngs else 'NO'}, %ocr "
                     f"{'not run' if shell is None else 'yes' if same_magic else 'NO'} "
                     f"(a NO makes that row's ratio not count); pages: {pages[0].shape[1]}x{pages[0].shape[0]}, Pillow's default font "
                     f"at {FONT_SIZE} px, {LINES_PER_PAGE if not args.smoke else 4} lines each")
        rt.unload(OCR)
        del engine

        # Anomaly detection -------------------------------------------------------------------------
        frame, planted = anomaly_frame(n_rows)

        def peer_raw() -> np.ndarray:
            return -sklearn_pipeline().fit(frame).score_samples(frame)  # higher = more anomalous

        def runtime_scores():
            rt.anomaly_fit("bench", frame)
            try:
                return rt.anomaly_score("bench", frame)
            finally:
                rt.anomaly_delete("bench")

        raw = peer_raw()
        result = runtime_scores()
        order = np.argsort(raw, kind="stable")
        monotone = bool(np.all(np.diff(result.scores[order]) >= -1e-12))  # our scores rise with the peer's
        top = set(np.argsort(-raw)[: len(planted) * 5])  # the planted rows are among the peer's top scores
        found = bool(result.is_anomaly[planted].all()) and set(planted) <= top
        same_anomaly = monotone and found
        got = interleaved({
            "rt.anomaly": lambda: rate(n_rows, runtime_scores),
            "sklearn": lambda: rate(n_rows, peer_raw),
        }, repeats, warmup=False)
        rows.append(Row(f"anomaly fit+score, {n_rows:,} x {COLUMNS}", "rt.anomaly_fit+score", got["rt.anomaly"],
                        "Pipeline.fit+score_samples", got["sklearn"], "rows/s", "ratio>=",
                        0.95 if same_anomaly else float("inf")))
        if shell is not None:
            shell.user_ns["bench_df"] = frame
            magic_scores = magic("anomaly bench_df").to_numpy()
            same_magic = bool(np.allclose(magic_scores, result.scores))
            got = interleaved({
                "%anomaly": lambda: rate(n_rows, lambda: magic("anomaly bench_df")),
                "sklearn": lambda: rate(n_rows, peer_raw),
            }, repeats, warmup=False)
            rows.append(Row(f"%anomaly, {n_rows:,} x {COLUMNS}", "%anomaly", got["%anomaly"],
                            "Pipeline.fit+score_samples", got["sklearn"], "rows/s", "ratio>=",
                            0.95 if same_anomaly and same_magic else float("inf")))
            same_anomaly &= same_magic
        agreed &= same_anomaly
        notes.append(f"anomaly scores in the peer's order: {'yes' if monotone else 'NO'}; the {len(planted)} planted "
                     f"rows flagged and among the peer's top {len(planted) * 5}: {'yes' if found else 'NO'} "
                     f"(a NO makes the ratio not count); IsolationForest(n_estimators=200, random_state=0)")
        notes.append(f"runs per side: {repeats} (interleaved, after one unmeasured run each: the agreement checks); threads: {nthreads}")
        print_table("OCR (rapidocr) and anomaly detection (scikit-learn)", rows, notes)
    finally:
        rt.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 0 if agreed else 1


if __name__ == "__main__":
    raise SystemExit(main())
