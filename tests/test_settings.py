"""Every setting is declared once (config.py, and a task's own in its module): RuntimeConfig's keywords,
the server's traits and the magics' traits all come from those declarations, with their environment
variables, and a task's setting reaches the runtime from each of them."""

from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from universal_kernel.config import MAGICS, RUNTIME, SERVER, RuntimeConfig, settings
from universal_kernel.magics.core import UniversalKernelMagics
from universal_kernel.server_ext.app import UniversalKernelApp


def test_each_place_has_a_trait_or_keyword_per_declared_setting():
    server_traits = UniversalKernelApp.class_traits(config=True)
    for name, setting in settings(SERVER).items():
        assert name in server_traits, name
        assert server_traits[name].help.startswith(setting.help), name
    magic_traits = UniversalKernelMagics.class_traits(config=True)
    for name, setting in settings(MAGICS).items():
        assert name in magic_traits and magic_traits[name].help.startswith(setting.help), name
    config = RuntimeConfig()
    for name, setting in settings(RUNTIME).items():
        assert hasattr(config, name), name
    # the names users already write keep working
    assert {"preload", "model_folders", "model_aliases", "keep_alive", "memory_budget", "queue_length", "parallel",
            "max_body_size", "threads", "allow_downloads", "stop_timeout"} <= set(server_traits)
    assert {"generation_model", "embedding_model", "default_format", "use_server", "server_url", "server_token",
            "embed_chunk_rows", "progress_min_rows", "allow_downloads"} <= set(magic_traits)


def test_a_tasks_own_settings_are_keywords_attributes_and_server_traits(monkeypatch, tmp_path):
    declared = settings(RUNTIME)
    assert {"ocr_max_pixels", "ocr_max_pages", "anomaly_folder", "embedding_cache_folder"} <= set(declared)
    from universal_kernel.tasks import anomaly_calls as anomaly, ocr

    assert declared["ocr_max_pages"] in ocr.SETTINGS and declared["anomaly_folder"] in anomaly.SETTINGS
    config = RuntimeConfig(ocr_max_pages=3, anomaly_folder=tmp_path)
    assert (config.ocr_max_pages, config.anomaly_folder, config.ocr_max_pixels) == (3, tmp_path, 40_000_000)

    monkeypatch.setenv("UNIVERSAL_KERNEL_ANOMALY_FOLDER", str(tmp_path / "detectors"))
    assert RuntimeConfig().anomaly_folder == tmp_path / "detectors"

    server_config = Config()
    server_config.UniversalKernelApp.ocr_max_pixels = 1000
    server_config.UniversalKernelApp.keep_alive = -1.0
    server_config.UniversalKernelApp.model_aliases = {"mine": "all-minilm-l6-v2"}
    runtime_config = UniversalKernelApp(config=server_config).runtime_config()
    assert (runtime_config.ocr_max_pixels, runtime_config.ocr_max_pages) == (1000, 50)
    assert runtime_config.keep_alive == -1.0 and runtime_config.aliases == {"mine": "all-minilm-l6-v2"}
    assert runtime_config.anomaly_folder == tmp_path / "detectors"  # not a server trait: the shared folder
    assert runtime_config.data_folders == runtime_config.model_folders


def test_the_command_line_and_the_environment_reach_the_servers_runtime(monkeypatch):
    app = UniversalKernelApp()
    app.parse_command_line(['--UniversalKernelApp.preload=["a", "b"]', "--UniversalKernelApp.ocr_max_pages=7",
                            "--UniversalKernelApp.threads=2"])
    assert app.preload == ["a", "b"] and app.ocr_max_pages == 7 and app.threads == 2
    assert app.runtime_config().ocr_max_pages == 7

    assert (UniversalKernelApp().parallel, RuntimeConfig().parallel) == (4, 1)  # many clients; one cell at a time
    monkeypatch.setenv("UNIVERSAL_KERNEL_PARALLEL", "2")
    monkeypatch.setenv("UNIVERSAL_KERNEL_KEEP_ALIVE", "7")
    assert (UniversalKernelApp().parallel, RuntimeConfig().parallel) == (2, 2)
    assert (UniversalKernelApp().keep_alive, RuntimeConfig().keep_alive) == (7.0, 7.0)
    assert RuntimeConfig(keep_alive=1).keep_alive == 1  # a keyword wins over the environment

    with pytest.raises(TraitError, match="parallel must be at least 1"):
        UniversalKernelApp().parallel = 0


def test_embedding_cache_environment_and_keywords(monkeypatch, tmp_path):
    for off in ("off", "", "0"):
        monkeypatch.setenv("UNIVERSAL_KERNEL_EMBEDDING_CACHE", off)
        assert RuntimeConfig().embedding_cache_folder is None
    monkeypatch.setenv("UNIVERSAL_KERNEL_EMBEDDING_CACHE", str(tmp_path))
    assert RuntimeConfig().embedding_cache_folder == tmp_path
    monkeypatch.delenv("UNIVERSAL_KERNEL_EMBEDDING_CACHE")
    assert RuntimeConfig().embedding_cache_folder == Path.home() / ".cache" / "universal-kernel" / "embeddings"
    monkeypatch.setenv("UNIVERSAL_KERNEL_MEMORY_BUDGET", "1e9")
    assert RuntimeConfig().memory_budget == 10**9 and RuntimeConfig(memory_budget=None).memory_budget is None


def test_magics_traits_and_client_defaults_come_from_the_declarations():
    from universal_kernel.client import BUILTIN_EMBEDDING_MODEL, BUILTIN_GENERATION_MODEL

    config = RuntimeConfig()
    assert (BUILTIN_GENERATION_MODEL, BUILTIN_EMBEDDING_MODEL) == (config.default_generation_model,
                                                                 config.default_embedding_model)
    magics_config = Config()
    magics_config.UniversalKernelMagics.embed_chunk_rows = 8  # declared by the embedding task
    magics = UniversalKernelMagics(shell=None, config=magics_config)
    assert (magics.embed_chunk_rows, magics.allow_downloads, magics.default_format) == (8, True, "markdown")
    with pytest.raises(TraitError):
        magics.default_format = "html"


def test_an_unknown_keyword_is_refused_by_name():
    with pytest.raises(TypeError, match="unexpected keyword argument 'ocr_max_page'"):
        RuntimeConfig(ocr_max_page=3)
