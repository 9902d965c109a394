"""The magics class: argument declarations (IPython's `@magic_arguments`) and the shared state.

Each magic's work lives in its own module (generate, embed, runtime_magic), imported when the
magic first runs, so `%load_ext universal_kernel` stays fast.
"""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from ..config import EMBEDDING_MODEL, FORMATS, GENERATION_MODEL, MAGICS, settings
from ..errors import RuntimeFailure
from ..settings import traits_base
from .common import one_line, split_args, user_errors


@magics_class
class UniversalKernelMagics(traits_base(settings(MAGICS), MAGICS, "UniversalKernelMagics"), Magics):
    """%%generate, %embed and %runtime. Configurable: c.UniversalKernelMagics.generation_model = ...

    Its traits are generated from the settings' declarations (`universal_kernel.config.settings("magics")`)."""

    def __init__(self, shell=None, runtime=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self._local = runtime
        self._remote = None
        self.last_generation = None  # the Completion (or partial) of the last %%generate
        self.last_embedding: dict | None = None  # counts of the last %embed

    # Runtimes -------------------------------------------------------------------------------
    def local_runtime(self):
        if self._local is None:
            from .. import get_runtime

            self._local = get_runtime()
            resolver = getattr(self._local, "resolver", None)
            if resolver is not None:  # a kernel pulls on first use (the server does not: an admin's choice)
                from ..hub_progress import PullDisplay

                resolver.allow_downloads = resolver.allow_downloads or self.allow_downloads
                resolver.pull_progress = PullDisplay()
        return self._local

    def set_local_runtime(self, runtime) -> None:
        self._local = runtime

    def remote_runtime(self, url: str | None = None, token: str | None = None, *, reconnect: bool = False):
        """The server runtime of `--server`: the one in use, else the configured or discovered one.

        With `url` or `reconnect`, a new one, probed before it replaces the one in use: a server that is
        not there or refuses the token leaves everything as it was."""
        if self._remote is None or reconnect or url:
            self._remote = self.connect_remote(url, token)
        return self._remote

    def connect_remote(self, url: str | None = None, token: str | None = None):
        """A new probed `RemoteRuntime` (our Jupyter server or any OpenAI-compatible one); changes nothing here."""
        from ..client import RemoteRuntime

        return RemoteRuntime.connect(url or self.server_url or None,
                                     token if token is not None else (self.server_token or None),
                                     default_generation_model=self.generation_model or None,
                                     default_embedding_model=self.embedding_model or None)

    def use_remote(self, remote) -> None:
        """Send the magics' work to `remote` (a probed RemoteRuntime) from now on."""
        self._remote = remote
        self.use_server = True

    def runtime_in_use(self) -> str:
        """Which runtime the magics use now, in words, for messages."""
        if not self.use_server:
            return "the in-process runtime"
        return f"the server at {self._remote.base}" if self._remote is not None else "the Jupyter server's runtime"

    def runtime_for(self, server: bool = False):
        if not (server or self.use_server):
            return self.local_runtime()
        remote = self.remote_runtime()
        try:  # a server that stopped answering: asked again at the same URL, never replaced by local work
            note = getattr(remote, "reconnect_note", lambda: None)()
        except RuntimeFailure as exc:
            raise UsageError(one_line(exc.message)) from None
        if note:
            print(note)
        return remote

    # Magics ---------------------------------------------------------------------------------
    @no_var_expand
    @magic_arguments("%generate")  # the usage line's prefix adds the other `%`: `%%generate` (a cell magic)
    @argument("-m", "--model", default=None, help=f"model reference (default: {GENERATION_MODEL.default})")
    @argument("--system", default=None, help="system message")
    @argument("--max-tokens", type=int, default=None, help="most tokens to generate (default 256)")
    @argument("--temperature", type=float, default=None, help="sampling temperature, 0 for greedy")
    @argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    @argument("--seed", type=int, default=None, help="sampling seed (with --n K: answer j uses seed + j)")
    @argument("--n", type=int, default=None, metavar="K", help="K answers (1 to 16), each shown with its footer")
    @argument("--logprobs", type=int, default=None, metavar="N",
              help="show each token's probability and its N (0 to 20) most likely alternatives")
    @argument("--stop", nargs="+", default=None, metavar="S", help="stop strings (\\n, \\t understood)")
    @argument("--format", choices=FORMATS, default=None, help="how to render the text (default markdown)")
    @argument("--out", default=None, metavar="VAR", help="store the text (parsed object for json) in VAR")
    @argument("--chat", default=None, metavar="NAME", help="keep a conversation in NAME across cells")
    @argument("--no-stream", action="store_true", help="show the text only once it is complete")
    @argument("--no-interpolate", action="store_true", help="leave {name} in the prompt as written")
    @argument("--server", action="store_true", help="run on the Jupyter server's runtime")
    @cell_magic
    def generate(self, line, cell):
        """Generate text from the cell body as the prompt, streaming tokens into the output.

        `{name}` and `{name.attr}` are filled from the namespace when the name exists.
        """
        from .generate import run_generate

        args = split_args(UniversalKernelMagics.generate.parser, line)

        def record(generation):
            self.last_generation = generation

        @user_errors
        def generate():
            return run_generate(self.runtime_for(args.server), self.shell, args, cell,
                                model=args.model or self.generation_model or None,
                                default_format=self.default_format, record=record)

        return generate()

    @no_var_expand
    @magic_arguments()
    @argument("expr", nargs="*", help="a Series (df.text), a list of strings, or one string")
    @argument("-m", "--model", default=None, help=f"embedding model (default: {EMBEDDING_MODEL.default})")
    @argument("--out", default=None, metavar="VAR", help="store the float32 array in VAR")
    @argument("--column", default=None, metavar="NAME", help="add the vectors as column NAME of the DataFrame")
    @argument("--no-normalize", action="store_true", help="keep the vectors' lengths")
    @argument("--no-cache", action="store_true", help="compute every row: read and write no embedding cache")
    @argument("--precision", default=None, choices=("auto", "fp32", "bf16"),
              help="the encoder's precision (default auto: bf16 on a CPU with AVX512_BF16/AMX, behind a probe)")
    @argument("--server", action="store_true", help="run on the Jupyter server's runtime")
    @line_magic
    def embed(self, line):
        """Embed texts: one float32 row per input, in input order; NaN rows for missing values."""
        from .embed import parse_line, run_embed

        @user_errors
        def embed():
            expr, args = parse_line(line, UniversalKernelMagics.embed.parser)
            value, self.last_embedding = run_embed(
                self.runtime_for(args.server), self.shell, expr, args,
                model=args.model or self.embedding_model or None, chunk_rows=self.embed_chunk_rows,
                progress_min_rows=self.progress_min_rows)
            return value

        return embed()

    @magic_arguments()
    @argument("action", help="status | models | load | unload | alias | monitor | use")
    @argument("args", nargs="*",
              help="load/unload: MODEL; alias: NAME REF; use: local | server [URL] | dask [ADDRESS]")
    @argument("--backend", default="auto", help="load: auto, llama_cpp or transformers")
    @argument("--keep-alive", type=float, default=None, help="load: seconds to stay loaded, -1 forever")
    @argument("--token", default=None, help="use server: the Jupyter token, or an OpenAI-compatible server's API key")
    @argument("--interval", type=float, default=2.0, help="monitor: seconds between refreshes")
    @argument("--server", action="store_true", help="act on the Jupyter server's runtime")
    @line_magic
    def runtime(self, line):
        """Inspect and drive the runtime:

          %runtime status                       memory, loaded models, recent requests
          %runtime models                       every servable model
          %runtime load MODEL [--backend B] [--keep-alive S]
          %runtime unload MODEL                 (or `all`)
          %runtime alias NAME REF               a short name for a model reference
          %runtime monitor [--interval S]       a live widget: memory, models, latencies
          %runtime use local                    the magics run in this kernel's runtime
          %runtime use server [URL] [--token TOKEN]
                                                the magics run on a Jupyter server or OpenAI-compatible server
          %runtime use dask [ADDRESS]           Dask collections go to this cluster (tcp://host:8786)
          %runtime pull REF                     fetch a model by its Hub id (org/repo, org/repo:Q4_K_M)
          %runtime rm REF                       delete a pulled model from the Hugging Face cache

        `--server` acts on the Jupyter server's runtime."""
        from .runtime_magic import run_runtime

        args = split_args(UniversalKernelMagics.runtime.parser, line)
        return user_errors(run_runtime)(self, args)
