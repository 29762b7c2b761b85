"""``edgetl init``, ``run`` and ``demo``: the whole path from one pipeline file."""
from __future__ import annotations

import click

from edgetl.cli.group import echo, main
from edgetl.errors import EdgetlError
from edgetl.pipeline import STAGES


@main.command()
@click.option("--out", type=click.Path(dir_okay=False), default="pipeline.yaml", show_default=True)
def init(out):
    """Write a commented starter pipeline file."""
    from edgetl.pipeline import write_starter

    click.echo(f"wrote {write_starter(out)}; edit data: and out:, then: edgetl run {out}")


@main.command("run")
@click.argument("config", type=click.Path())
@click.option("--from", "from_stage", type=click.Choice(STAGES),
              default=None, help="Redo this stage and every one after it.")
@click.option("--force", is_flag=True, help="Redo every stage.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config key, e.g. --set train.alpha=0.5 --set verify.threads=4.")
def run_cmd(config, from_stage, force, overrides):
    """Run the pipeline in CONFIG: train (or distill, or search) -> calibrate -> export -> verify -> model card.

    Stages whose inputs did not change are skipped; an interrupted stage resumes."""
    from edgetl.pipeline import run

    res = run(config, from_stage, force, overrides, echo=echo)
    rep = res.get("report")
    if rep is not None and not rep.get("passed", True):
        raise EdgetlError("verification gates failed (see the table above and report.md)", exit_code=1)

@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="models/demo", show_default=True,
              help="Demo run directory; its config is written beside it (OUT.yaml).")
@click.option("--quick", is_flag=True, help="Fewer images and epochs (a smoke test).")
def demo(out, quick):
    """The whole workflow offline on scikit-learn's handwritten digits: `edgetl run` on a
    built-in config (teacher, distilled student, calibration, export, verify, model card).
    A re-run skips what is already done."""
    from edgetl.demo import run_demo

    run_demo(out, quick=quick, echo=echo)
