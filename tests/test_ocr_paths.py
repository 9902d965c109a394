"""Where `%ocr` may read a path from. A kernel is its user's own process: any file it can read works,
`~` expanded, outside the notebook's folder too, locally and with `%runtime use server` (the kernel reads
the file and sends its bytes). Allowed folders guard only what HTTP clients make the server read: a path
sent over HTTP is refused with a 400, and the server's own runtime keeps data files inside its folders."""

from __future__ import annotations

import shutil

import pytest
from jupyter_client.manager import start_new_kernel
from PIL import Image, ImageDraw, ImageFont

from universal_kernel import Runtime, RuntimeConfig
from universal_kernel.errors import ReferenceRefused

from .conftest import TOKEN
from .test_magics_kernel import execute, value

OCR = "rapidocr"
LINES = ["Scanned page one", "Order 5531"]


def _page() -> Image.Image:
    image = Image.new("RGB", (460, 130), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=36)
    for row, line in enumerate(LINES):
        draw.text((16, 14 + 56 * row), line, fill="black", font=font)
    return image


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A home with ~/scans/page1.png, and a notebook folder elsewhere (no image in it yet)."""
    home, notebook = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("notebook")
    (home / "scans").mkdir()
    _page().save(home / "scans" / "page1.png")
    return {"home": home, "notebook": notebook, "scan": home / "scans" / "page1.png"}


@pytest.fixture(scope="module")
def kernel(folders):
    """A real kernel started in the notebook folder, its HOME the home above (so `~` is that home)."""
    import os

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(folders["notebook"]),
                              env=dict(os.environ, HOME=str(folders["home"])))
    try:
        reply, _ = execute(kc, "%load_ext universal_kernel")
        assert reply["status"] == "ok", reply
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _ocr_text(kc, line: str) -> str:
    reply, _ = execute(kc, f"_text = %ocr {line}", timeout=300)
    assert reply["status"] == "ok", reply
    return value(kc, "_text")


def test_a_path_outside_the_notebook_folder_reads_as_a_copy_inside(kernel, folders):
    shutil.copy(folders["scan"], folders["notebook"] / "page1.png")
    inside = _ocr_text(kernel, "'page1.png'")  # relative: the notebook's folder
    assert all(line.lower() in inside.lower() for line in LINES), inside
    assert _ocr_text(kernel, "'~/scans/page1.png'") == inside
    assert _ocr_text(kernel, f"'{folders['scan']}'") == inside


def test_a_missing_file_is_a_one_line_usage_error(kernel):
    reply, _ = execute(kernel, "%ocr '~/scans/missing.png'")
    assert reply["status"] == "error" and reply["ename"] == "UsageError", reply
    assert "no file '~/scans/missing.png'" in reply["evalue"] and "\n" not in reply["evalue"], reply


def test_through_the_server_the_kernel_reads_the_file_and_sends_its_bytes(kernel, folders, server):
    """The server's folders are its root and its cache: the scan is in neither, and the server reads no path."""
    reply, _ = execute(kernel, f"%runtime use server {server.url} --token {TOKEN}")
    assert reply["status"] == "ok", reply
    try:
        far = _ocr_text(kernel, "'~/scans/page1.png'")
    finally:
        execute(kernel, "%runtime use local")
        server.post("universal/api/unload", {"model": OCR})
    shutil.copy(folders["scan"], folders["notebook"] / "page1.png")
    assert far == _ocr_text(kernel, "'page1.png'")


def test_over_http_a_path_is_refused_with_an_openai_shaped_400(server, folders):
    for path in [str(folders["scan"]), "~/scans/page1.png"]:
        response = server.post("universal/v1/ocr", {"images": [path]})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}, error
        assert error["type"] == "invalid_request_error" and error["param"] == "images", error
        assert "the server reads no path" in error["message"] and path in error["message"], error


def test_the_servers_runtime_keeps_data_files_inside_its_folders(folders, tmp_path):
    """What the server sets (`data_folders`): a path outside is refused before anything loads."""
    from universal_kernel.server_ext.app import UniversalKernelApp

    config = UniversalKernelApp().runtime_config()
    assert config.data_folders == config.model_folders
    runtime = Runtime(RuntimeConfig(model_folders=[tmp_path], data_folders=[tmp_path], convert_cache=tmp_path / "c"))
    try:
        with pytest.raises(ReferenceRefused, match=r"images\[0\]: .* is outside the allowed folders") as info:
            runtime.ocr(str(folders["scan"]))
        assert info.value.param == "images"
        assert runtime.status()["models"] == []
    finally:
        runtime.close()
