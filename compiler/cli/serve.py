"""`kiln serve`: flags -> runtime.serve (the runtime alone: no compiler code is loaded)."""

from __future__ import annotations

import click

from runtime.errors import KilnError

from .main import main


@main.command("serve")
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on (0: any free one).")
@click.option("--threads", type=int, help="TVM worker threads per run (default: all usable CPUs).")
@click.option("--max-batch", type=int, default=1, show_default=True,
              help="Dynamic batching: up to this many rows per run, for models with a symbolic batch dim.")
@click.option("--batch-timeout-ms", type=float, default=2.0, show_default=True,
              help="How long the first request of a batch waits for others.")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests queued per model version; beyond it the server answers 503 at once.")
@click.option("--max-body-mb", type=float, default=64.0, show_default=True, help="Largest request body (413).")
@click.option("--request-timeout-s", type=float, default=30.0, show_default=True, help="Per request (504).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="Require 'Authorization: Bearer TOKEN'.")
@click.option("--poll-s", type=float, default=5.0, show_default=True,
              help="Rescan the repository this often for new versions (0: only via the load endpoint).")
def serve_cmd(sources, host, port, threads, max_batch, batch_timeout_ms, max_queue, max_body_mb,
              request_timeout_s, token_file, poll_s):
    """Serve SOURCES (artifacts, or a repository folder of NAME/VERSION/model.so) over HTTP with the KServe v2
    protocol, plus /metrics (Prometheus). Stops gracefully on Ctrl-C / SIGTERM."""
    from runtime.serve import ServeOptions, read_token, serve  # noqa: PLC0415 - the runtime alone, no compiler
    from runtime.tvm_runtime import use_runtime_only  # noqa: PLC0415

    use_runtime_only()

    if max_batch < 1 or max_queue < 1 or max_body_mb <= 0 or request_timeout_s <= 0:
        raise KilnError("--max-batch and --max-queue must be at least 1, --max-body-mb and --request-timeout-s "
                        "positive", "fix the option values")
    options = ServeOptions(host=host, port=port, threads=threads, max_batch=max_batch,
                           batch_timeout_ms=batch_timeout_ms, max_queue=max_queue, max_body_mb=max_body_mb,
                           request_timeout_s=request_timeout_s, token=read_token(token_file), poll_s=poll_s)
    serve(list(sources), options, announce=lambda line: click.echo(line, err=True))
