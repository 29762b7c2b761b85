"""``edgetl train``, ``distill`` and ``adapt``: training a run (the options they share are :func:`train_options`)."""
from __future__ import annotations

from typing import Any

import click

from edgetl.cli.group import d, echo, main
from edgetl.config import ADAPT_METHODS, CACHE_DTYPES, RECIPES, RESIZES, STRATEGIES, AdaptOptions, DistillConfig, TrainConfig
from edgetl.errors import EdgetlError


def train_options(f):
    """Options shared by `train` and `distill` (the student)."""
    opts = [
        click.option("--backbone", default=d(TrainConfig, "backbone"), show_default=True,
                     help="Backbone from the registry (see `edgetl backbones`)."),
        click.option("--alpha", type=float, default=d(TrainConfig, "alpha"),
                     help="Width multiplier for MobileNetV2 (e.g. 0.35, 1.0). [default: 1.0]"),
        click.option("--img-size", type=int, default=d(TrainConfig, "img_size"), help="Input size in px. [default: the backbone's, 224]"),
        click.option("--weights", default=d(TrainConfig, "weights"), show_default=True,
                     help="imagenet (Keras cache, $KERAS_HOME/models), none (random init) or a .h5 path."),
        click.option("--resize", type=click.Choice(RESIZES), default=d(TrainConfig, "resize"), show_default=True,
                     help="crop: central crop to the input's aspect ratio, then resize; squash: stretch."),
        click.option("--val-split", type=float, default=d(TrainConfig, "val_split"), show_default=True,
                     help="Validation fraction when DATA has no train/ and val/ folders (stratified, seeded)."),
        click.option("--test-split", type=float, default=None,
                     help="Untouched test fraction carved from the training pool when DATA has no test/ "
                          "(stratified, seeded; never used for any choice). [default: auto: 0.15 when every "
                          "class keeps >= 10 test images, else none; 0: none]"),
        click.option("--seed", type=int, default=d(TrainConfig, "seed"), show_default=True, help="Same seed, same machine: same result."),
        click.option("--batch-size", type=int, default=d(TrainConfig, "batch_size"), show_default=True),
        click.option("--epochs-head", type=int, default=d(TrainConfig, "epochs_head"), show_default=True,
                     help="Phase 1 epochs (frozen base, head on cached features)."),
        click.option("--epochs-finetune", type=int, default=d(TrainConfig, "epochs_finetune"), show_default=True,
                     help="Phase 2 epochs (partial unfreezing); 0 skips phase 2."),
        click.option("--lr-head", type=float, default=d(TrainConfig, "lr_head"), show_default=True, help="Adam learning rate, phase 1."),
        click.option("--lr-finetune", type=float, default=d(TrainConfig, "lr_finetune"),
                     help="Adam learning rate, phase 2. [default: 1e-5 with --recipe fixed; auto tries 1e-5 and "
                          "1e-4, or only this rate when given]"),
        click.option("--recipe", type=click.Choice(RECIPES), default=d(TrainConfig, "recipe"), show_default=True,
                     help="auto: phase 2 picks its depth (2 or 5 units from the top) and learning rate (1e-5 or "
                          "1e-4) from a short trial of each on the cached activations, scored on validation, and "
                          "each phase runs at least --min-steps updates (a depth or rate given with --unfreeze, "
                          "--unfreeze-blocks or --lr-finetune is kept, and only the rest is searched); "
                          "fixed: --unfreeze and --lr-finetune as given."),
        click.option("--lr-decay", type=float, default=d(TrainConfig, "lr_decay"), show_default=True,
                     help="Discriminative learning rates: each unit deeper from the top learns at lr x decay."),
        click.option("--accumulate", type=int, default=d(TrainConfig, "accumulate"), show_default=True,
                     help="Average gradients over N batches per update: effective batch = --batch-size x N."),
        click.option("--min-steps", type=int, default=d(TrainConfig, "min_steps"), show_default=True,
                     help="Auto recipe: phase 1 makes at least this many optimizer updates (phase 2: half)."),
        click.option("--unfreeze", type=int, default=d(TrainConfig, "unfreeze"),
                     help="Phase 2 unfreezes the last N layers (whole blocks for block-unit backbones). "
                          "[default: 20 with --recipe fixed; auto tries 2 and 5 units, or only this depth when given]"),
        click.option("--unfreeze-blocks", type=int, default=d(TrainConfig, "unfreeze_blocks"),
                     help="Or unfreeze the last K blocks (not with --unfreeze); auto keeps it too."),
        click.option("--dropout", type=float, default=d(TrainConfig, "dropout"), show_default=True),
        click.option("--dense", type=int, default=d(TrainConfig, "dense"), show_default=True, help="Units of an optional hidden layer in the head."),
        click.option("--label-smoothing", type=float, default=d(TrainConfig, "label_smoothing"), show_default=True),
        click.option("--l2", type=float, default=d(TrainConfig, "l2"), show_default=True, help="L2 penalty on head weights."),
        click.option("--views", type=int, default=d(TrainConfig, "views"), show_default=True,
                     help="Cached views per image in phase 1: 1 plain + (views-1) augmented."),
        click.option("--mixup", type=float, default=d(TrainConfig, "mixup"), show_default=True,
                     help="Blend each augmented view with a random partner, weight ~ Beta(a, a) (a = 0.4 is "
                          "typical; 0: off). Labels blend too; with distillation the teacher labels the blend."),
        click.option("--augment", default=d(TrainConfig, "augment"), show_default=True,
                     help="none, or a comma list of flip,rotate,zoom,translate,contrast."),
        click.option("--class-weights", type=click.Choice(["none", "auto"]), default=d(TrainConfig, "class_weights"), show_default=True,
                     help="auto balances the loss for imbalanced classes."),
        click.option("--patience", type=int, default=d(TrainConfig, "patience"), show_default=True, help="Early-stopping patience (epochs)."),
        click.option("--strict", is_flag=True, help="Fail on the first unusable image instead of skipping it."),
        click.option("--strategy", type=click.Choice(STRATEGIES), default=d(TrainConfig, "strategy"),
                     show_default=True, help="tf.distribute strategy: mirrored (local GPUs or CPUs), multiworker "
                                             "(one process per machine, TF_CONFIG; see docs/train.md)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=d(TrainConfig, "cache_dir"),
                     help="Folder of the on-disk view cache (shards of cached views). [default: inside the run's "
                          "checkpoints/]"),
        click.option("--cache-budget", type=float, default=d(TrainConfig, "cache_budget"), show_default=True,
                     help="Disk the view cache may take, in GB; a larger cache is refused, saying what it needs."),
        click.option("--cache-dtype", type=click.Choice(CACHE_DTYPES), default=d(TrainConfig, "cache_dtype"),
                     show_default=True, help="Storage type of cached features and activations."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run directory. [default: a new folder under models/]"),
        click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint."),
        click.option("--force", is_flag=True,
                     help="Retrain the finished run in --out in place: its model is replaced and what was made from "
                          "it (calibration, exports, reports, model card) is removed."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(names) -> list[str]:
    """The options among ``names`` the user set (on the command line or through the environment)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]


def _train_config(data: str, kw: dict[str, Any]) -> TrainConfig:
    """TrainConfig from the options. Explicit options win: one that another option would override
    is refused in one line instead of being silently ignored."""
    kw = dict(kw)
    kw.pop("force", None)  # train/distill take it beside the config (a finished run is replaced only with it)
    resume = kw.pop("resume", False)
    if resume:  # the run continues with its saved config.yaml: any other option would be ignored
        ignored = [n for n in _given(kw) if n != "out"]
        if ignored:
            raise EdgetlError(f"{_flag(ignored[0])}: --resume continues the run with the options saved in its "
                              f"config.yaml, so {_flag(ignored[0])} would be ignored; drop it (or start a new run "
                              f"with another --out)")
    if kw.get("recipe") == "fixed" and _given(["min_steps"]):
        raise EdgetlError(f"--min-steps {kw['min_steps']}: is ignored by --recipe fixed, which runs the epochs as "
                          f"given; drop it or use --recipe auto")
    return TrainConfig(data=data, **kw)


@main.command()
@click.argument("data", type=click.Path())
@train_options
def train(data, **kw):
    """Fine-tune a backbone on DATA: DATA/<class>/<images>, or DATA/train|val[|test]/<class>/.

    Phase 1 trains a new head on features of the frozen base, computed once per
    image and cached view; phase 2 unfreezes the last layers at a low learning
    rate with BatchNorm in inference mode. Writes a run directory with the
    model, labels, metrics, curves and a manifest.
    """
    from edgetl.training.train import train as run_train

    cfg = _train_config(data, kw)
    run_train(cfg, resume=kw["resume"], echo=echo, force=kw["force"])

@main.command()
@click.argument("data", type=click.Path())
@click.option("--teacher", required=True, type=click.Path(),
              help="An edgetl run directory or a Keras classifier file (logits or probabilities).")
@click.option("--student", default=d(TrainConfig, "backbone"), show_default=True,
              help="Student backbone; --backbone (as in `train` and the pipeline file) says the same.")
@click.option("--kd-alpha", type=float, default=d(DistillConfig, "kd_alpha"), show_default=True,
              help="Weight of the hard-label loss; 1 - kd-alpha weighs the teacher's soft targets.")
@click.option("--temperature", type=float, default=d(DistillConfig, "temperature"), show_default=True, help="Softmax temperature T.")
@click.option("--sweep", is_flag=True, help="Try kd-alpha in {0.1, 0.5} x T in {2, 4}; keep the best on validation.")
@click.option("--no-compare", is_flag=True, help="Skip training the student alone for the side-by-side report.")
@click.option("--unlabeled", type=click.Path(), default=None,
              help="Transfer set: a folder of unlabelled images (any depth). The teacher labels them; the "
                   "student learns from them through the soft targets only. Must not hold validation images.")
@train_options
@click.pass_context
def distill(ctx, data, teacher, student, kd_alpha, temperature, sweep, no_compare, unlabeled, **kw):
    """Distil TEACHER into a compact student trained on DATA (same options as `train`).

    Loss on logits: a*CE(y, s) + (1-a)*T^2*KL(softmax(t/T) || softmax(s/T)). The teacher
    runs once per image and cached view. Writes an ordinary run plus distill.json with
    teacher / student alone / distilled student side by side. --unlabeled adds a
    transfer set the teacher labels: where distillation pays most (few labels)."""
    from edgetl.training.distill import distill as run_distill

    # the student's backbone: --student, or --backbone as in `train` and the pipeline file (train.backbone)
    backbone = kw.pop("backbone", None)
    given = ctx.get_parameter_source("backbone") is click.core.ParameterSource.COMMANDLINE
    if given and ctx.get_parameter_source("student") is click.core.ParameterSource.COMMANDLINE and backbone != student:
        raise EdgetlError(f"--student {student} and --backbone {backbone}: both name the student's backbone; keep one")
    cfg = _train_config(data, {**kw, "backbone": backbone if given else student})
    run_distill(cfg, DistillConfig(teacher, kd_alpha, temperature, sweep, not no_compare, unlabeled),
                resume=kw["resume"], echo=echo, force=kw["force"])

@main.command()
@click.argument("run", type=click.Path())
@click.option("--target", required=True, type=click.Path(),
              help="Folder of unlabelled target images (any depth): what the device's camera sees.")
@click.option("--method", type=click.Choice(ADAPT_METHODS), default=d(AdaptOptions, "method"), show_default=True,
              help="adabn: BatchNorm statistics re-estimated on the target; pseudo: self-training on confident, "
                   "class-balanced target predictions; dann: domain-adversarial (gradient reversal); auto: all three, "
                   "chosen without target labels.")
@click.option("--target-labels", type=click.Path(), default=None,
              help="Folder of labelled target images (class folders), for evaluation only; never trained on. "
                   "Must not share images with --target.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="The adapted run. [default: RUN-adapt]")
@click.option("--seed", type=int, default=d(AdaptOptions, "seed"), show_default=True)
@click.option("--epochs", type=int, default=d(AdaptOptions, "epochs"), show_default=True,
              help="Fine-tuning epochs (pseudo: per round; dann: epochs x rounds in all).")
@click.option("--rounds", type=int, default=d(AdaptOptions, "rounds"), show_default=True, help="Pseudo-labelling rounds.")
@click.option("--threshold", type=float, default=d(AdaptOptions, "threshold"), show_default=True,
              help="Least confidence of a pseudo-label.")
@click.option("--max-fraction", type=float, default=d(AdaptOptions, "max_fraction"), show_default=True,
              help="Most of the target images pseudo-labelled (in the last round; earlier rounds take less).")
@click.option("--dann-weight", type=float, default=d(AdaptOptions, "dann_weight"), show_default=True,
              help="Final weight of DANN's reversed domain gradient (ramped up from 0).")
@click.option("--lr", type=float, default=d(AdaptOptions, "lr"), show_default=True, help="Adam learning rate.")
@click.option("--unfreeze", type=int, default=d(AdaptOptions, "unfreeze"), show_default=True,
              help="Last N layers of the base that pseudo and dann train (BatchNorm stays frozen).")
@click.option("--views", type=int, default=d(AdaptOptions, "views"), show_default=True,
              help="Cached views per image: 1 plain + (views-1) augmented.")
@click.option("--batch-size", type=int, default=d(AdaptOptions, "batch_size"), show_default=True)
def adapt(run, **kw):
    """Adapt RUN's model to unlabelled target images; writes a new, ordinary run.

    Reports source and target accuracy before and after (95% Wilson intervals) when
    --target-labels is given, else label-free signals: prediction entropy, class shares
    and agreement between methods. export, verify, bundle and the model card work on the
    adapted run unchanged."""
    from edgetl.training.adapt import adapt as run_adapt

    run_adapt(run, AdaptOptions(**kw).validate(), echo=echo)
