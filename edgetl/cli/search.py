"""``edgetl search``: the architecture search under device budgets."""
from __future__ import annotations

import click

from edgetl.cli.group import d, echo, main
from edgetl.config import SearchOptions


@main.command()
@click.argument("data", type=click.Path())
@click.option("--max-latency-ms", type=float, default=None,
              help="Budget (required): p50 latency at batch 1 in ms, on this machine (or the device, with --device).")
@click.option("--max-size-kb", type=float, default=None, help="Budget: size of the exported model file in KiB.")
@click.option("--max-ram-kb", type=float, default=None,
              help="Budget: memory the model takes to load and run in its runtime, in KiB (as the bundle measures it).")
@click.option("--device", type=click.Path(), default=None,
              help="Device results (the results.json of a bundle check, or RUN/device-results/*.json of the "
                   "browser check): latencies are scaled to that device, with the scale's error stated.")
@click.option("--budget-minutes", type=float, default=None, help="Start no new training after this many minutes.")
@click.option("--backbones", default=d(SearchOptions, "backbones"), show_default=True, help="Backbones to try.")
@click.option("--alphas", default=d(SearchOptions, "alphas"), show_default=True, help="MobileNetV2 widths to try.")
@click.option("--sizes", default=d(SearchOptions, "sizes"), show_default=True, help="Input sizes (px) to try.")
@click.option("--depths", default=d(SearchOptions, "depths"), show_default=True,
              help="Phase-2 depths in blocks for the survivors of halving (0: the head only).")
@click.option("--quants", default=d(SearchOptions, "quants"), show_default=True, help="Quantization modes to try.")
@click.option("--formats", default=d(SearchOptions, "formats"), show_default=True, help="Formats to try.")
@click.option("--weights", type=click.Choice(["imagenet", "none"]), default=d(SearchOptions, "weights"),
              show_default=True, help="none: random init (tests and smoke runs only).")
@click.option("--eta", type=int, default=d(SearchOptions, "eta"), show_default=True,
              help="Successive halving: the best 1/eta head-only candidates get phase 2.")
@click.option("--recipe", type=click.Choice(["auto", "fixed"]), default=d(SearchOptions, "recipe"), show_default=True,
              help="Every candidate's recipe, as train --recipe (auto: phase 1 >= train's --min-steps updates; "
                   "phase 2 picks its lr on val).")
@click.option("--epochs-head", type=int, default=d(SearchOptions, "epochs_head"), show_default=True)
@click.option("--epochs-finetune", type=int, default=d(SearchOptions, "epochs_finetune"), show_default=True)
@click.option("--views", type=int, default=d(SearchOptions, "views"), show_default=True)
@click.option("--batch-size", type=int, default=d(SearchOptions, "batch_size"), show_default=True)
@click.option("--seed", type=int, default=d(SearchOptions, "seed"), show_default=True)
@click.option("--val-split", type=float, default=d(SearchOptions, "val_split"), show_default=True)
@click.option("--test-split", type=float, default=None,
              help="Test fraction (default: train's auto rule). Test is read once, for the pick, after the choice.")
@click.option("--threads", type=int, default=d(SearchOptions, "threads"), show_default=True,
              help="Threads of every runtime when timing (the target's).")
@click.option("--runs", type=int, default=d(SearchOptions, "runs"), show_default=True, help="Timed runs per model.")
@click.option("--out", type=click.Path(file_okay=False), default=d(SearchOptions, "out"), show_default=True,
              help="The search's folder: candidates/ (ordinary runs), measurements, search.md, the plot. A re-run "
                   "reads finished candidates back.")
@click.option("--then", "then", default=None, metavar="export,verify",
              help="Continue with the pick: export it (its format and quantization), then verify it.")
def search(data, then, **kw):
    """Find the most accurate model for DATA that fits a latency (size, memory) budget.

    \b
    1. every backbone x width x input size x quantization x format is exported with random
       weights and timed here (or scaled to --device): what is over budget is never trained;
    2. successive halving: each architecture that fits trains its head on frozen features
       (cheap), the best 1/eta go on to phase 2 at each --depths;
    3. the Pareto front (val accuracy, latency, size), the pick (most accurate on val within
       the budget) and why every other candidate lost; the pick's test accuracy once, after
       the choice. Every candidate is an ordinary run under OUT/candidates/."""
    from edgetl.search.driver import continue_with_pick, parse_then
    from edgetl.search.driver import search as run_search

    steps = parse_then(then)
    opts = SearchOptions(data=data, **kw).validate()
    rep = run_search(opts, echo=echo)
    continue_with_pick(rep, steps, opts, echo)
