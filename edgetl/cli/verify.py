"""``edgetl verify``, ``card``, ``bundle``, ``serve`` and ``predict``: model files to a verdict on a device."""
from __future__ import annotations

import click

from edgetl.cli.group import d, echo, main
from edgetl.config import BUNDLE_FORMATS, BundleOptions, PredictOptions, VerifyOptions
from edgetl.errors import EdgetlError


@main.command()
@click.argument("run", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Folder of labelled images (class folders). [default: the run's held-out split]")
@click.option("--threads", type=int, default=d(VerifyOptions, "threads"), show_default=True, help="Threads of every runtime (the target's).")
@click.option("--max-drop", type=float, default=d(VerifyOptions, "max_drop"), show_default=True,
              help="Gate: points of top-1 an artifact may lose against Keras.")
@click.option("--min-agreement", type=float, default=d(VerifyOptions, "min_agreement"), show_default=True,
              help="Gate: top-1 agreement with Keras.")
@click.option("--max-latency-ms", type=float, default=None, help="Gate: p50 latency at batch 1.")
@click.option("--latency-runtimes", default=None, metavar="litert,...",
              help="Apply --max-latency-ms only to rows of these runtimes (e.g. litert, the one edgetl search "
                   "times). [default: every runtime]")
@click.option("--runs", type=int, default=d(VerifyOptions, "runs"), show_default=True, help="Timed runs after warm-up (>= 100).")
@click.option("--batch", type=int, default=d(VerifyOptions, "batch"), show_default=True, help="Batch size for throughput.")
@click.option("--device-results", type=click.Path(), multiple=True,
              help="results.json from a bundle run on a device; its rows join the report.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Report folder. [default: RUN]")
@click.option("--robustness", is_flag=True,
              help="Also score every artifact under gaussian noise, blur, low light, contrast and JPEG at 3 "
                   "severities: a table and a plot.")
def verify(run, data, threads, max_drop, min_agreement, max_latency_ms, latency_runtimes, runs, batch, device_results, out,
           robustness):
    """Score and time every artifact of RUN against the Keras reference, with gates.

    Writes a table, report.json, report.md, plots and (without --out) the model card; exit code 1
    when any gate fails."""
    from edgetl.verify.verifier import verify as run_verify

    opts = VerifyOptions(threads, max_drop, min_agreement, max_latency_ms, runs, batch, data, out, robustness,
                         tuple(s.strip() for s in latency_runtimes.split(",")) if latency_runtimes else None)
    rep = run_verify(run, opts.validate(), device_results, echo=echo)
    if out is None:  # the report is the run's: its model card follows it
        from edgetl.card import write_card

        try:
            write_card(run, echo=echo)
        except EdgetlError as e:  # the verdict above stands; the card is said to be missing
            click.echo(f"warning: no model card: {e.message}; after fixing it: edgetl card {run}", err=True)
    if not rep["passed"]:
        failed = [f"{r['artifact']}: {'; '.join(r['failed_gates'])}" for r in rep["rows"] if r.get("failed_gates")]
        raise EdgetlError("gate failed: " + " | ".join(failed), exit_code=1)


@main.command()
@click.argument("run", type=click.Path())
def card(run):
    """Write RUN/MODEL_CARD.md: the model, its data and training, how every artifact scored
    (after `edgetl verify`), which one to ship, its known limits and app snippets.

    `edgetl verify RUN` refreshes it too."""
    from edgetl.card import write_card

    write_card(run, echo=echo)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--formats", default=d(BundleOptions, "formats"), show_default=True, help=f"Exported formats to include: {','.join(BUNDLE_FORMATS)}.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The .zip to write.")
@click.option("--samples", type=int, default=d(BundleOptions, "samples"), show_default=True, help="Held-out sample images with references.")
@click.option("--threads", type=int, default=d(BundleOptions, "threads"), show_default=True, help="Suggested threads in the bundle's README.")
@click.option("--web", is_flag=True, help="The browser check instead, as static files to host anywhere "
              "(every .tflite/.onnx/.ort; --samples defaults to 100); see edgetl serve.")
@click.pass_context
def bundle(ctx, run, formats, out, samples, threads, web):
    """A zip to validate RUN's exported models on the device itself: models, labels,
    sample inputs with reference outputs and a standalone script (numpy + runtime).
    With --web: the page of `edgetl serve` as static files, for any phone's browser."""
    if web:
        from edgetl.web.webbundle import web_bundle

        default_samples = ctx.get_parameter_source("samples") == click.core.ParameterSource.DEFAULT
        web_bundle(run, out, samples=100 if default_samples else samples, echo=echo)
        return
    from edgetl.export.bundle import bundle as run_bundle

    run_bundle(run, out, formats, samples, threads, echo=echo)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: 0.0.0.0 (every network of this machine) or one of its addresses, for a phone.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0: any free port).")
@click.option("--samples", type=int, default=100, show_default=True, help="Held-out images the page runs.")
def serve(run, host, port, samples):
    """Validate RUN's exported models in a phone's browser: serves a page (LiteRT.js for .tflite,
    onnxruntime-web for .onnx/.ort; WASM, and WebGPU where offered) that runs them on held-out
    images and sends its results back to RUN/device-results/ for `edgetl verify --device-results`."""
    from edgetl import signals
    from edgetl.web.server import serve as run_serve

    run_serve(run, host, port, samples, echo=echo)
    if signals.received is not None:  # stopped by SIGINT/SIGTERM: that signal's line and exit code (130/143)
        raise KeyboardInterrupt


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", type=click.Path(), nargs=-1, required=True)
@click.option("--top-k", type=int, default=d(PredictOptions, "top_k"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--threads", type=int, default=d(PredictOptions, "threads"))
def predict(model, images, top_k, as_json, threads):
    """Top-k labels and probabilities of MODEL (.keras, .tflite or .onnx) for IMAGES."""
    import json as _json

    from edgetl.verify.predict import predict as run_predict
    from edgetl.verify.predict import unreadable

    res = run_predict(model, images, top_k, threads)
    if as_json:
        click.echo(_json.dumps(res, indent=2))
    for r in res:
        if "error" in r:
            click.echo(f"warning: {r['image']}: {r['error']}; skipped", err=True)
        elif not as_json:
            click.echo(r["image"])
            for t in r["top"]:
                click.echo(f"  {t['probability']:7.4f}  {t['label']}")
    bad = unreadable(res)
    if bad:  # the others are printed above; the exit code still says something went wrong
        raise EdgetlError(f"{len(bad)} of {len(res)} image(s) could not be read: "
                          + ", ".join(r["image"] for r in bad), exit_code=1)
