"""``convertsnn evaluate``: clean and adversarial accuracy of an SNN file over timesteps: one
attack or an attack suite per eps, sanity flags, AutoAttack cross-check, reports, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import click

from convertsnn.attacks.transfer import load_source
from convertsnn.cli.options import (
    device_option,
    layout_option,
    parse_int_list,
    parse_number_list,
    resolve_device,
    runtime_option,
    write_json_out,
)
from convertsnn.data import check_dataset_fits, load_dataset
from convertsnn.errors import ConvertSNNError
from convertsnn.eval.report import (
    cost_text,
    flags_text,
    markdown_report,
    rows_table,
    runs_table,
    write_json,
)
from convertsnn.eval.robustness import evaluate_robustness
from convertsnn.eval.settings import EvalSettings, default_eot
from convertsnn.eval.state import StateDir
from convertsnn.eval.suites import SUITES, get_suite, single_attack_suite, with_transfer_source
from convertsnn.snn.network import check_timesteps
from convertsnn.snn.serialize import atomic_write, check_writable, load_snn, package_versions
from convertsnn.zoo import resolve_model_file

# which CLI options each attack takes (as keyword arguments of the attack class)
ATTACK_OPTIONS = {
    "fgsm": (),
    "rfgsm": ("alpha",),
    "pgd": ("steps", "alpha", "restarts", "loss"),
    "pgd-search": ("steps", "alpha", "restarts", "loss", "queries"),
    "apgd-ce": ("steps", "restarts"),
    "apgd-dlr": ("steps", "restarts"),
    "apgd-t": ("steps", "targets", "restarts"),
    "square": ("queries",),
    "transfer": ("steps", "restarts"),
    "autoattack": (),
}


def attack_params(name: str, options: dict) -> dict:
    """The given CLI options that attack ``name`` takes (unset ones keep the attack's default)."""
    if name not in ATTACK_OPTIONS:
        raise ConvertSNNError(
            f"unknown attack '{name}'; choose none or one of {', '.join(ATTACK_OPTIONS)}"
        )
    return {k: options[k] for k in ATTACK_OPTIONS[name] if options.get(k) is not None}


def command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the parsed options (non-default ones only)."""
    parts = ["convertsnn", ctx.info_name or "evaluate", str(ctx.params["model_file"])]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Option) and value is not None and value != param.default:
            flag = param.opts[0] if value is not False else param.secondary_opts[0]
            parts += [flag] if isinstance(value, bool) else [flag, str(value)]
    return " ".join(parts)


def write_report(directory: str, document: dict) -> list[Path]:
    """``report.md``, ``results.json`` and the PNG plots in ``directory``."""
    from convertsnn.eval import plots

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    title = Path(document["model"]).name
    images = [
        plots.accuracy_vs_eps(document["rows"], folder / "accuracy_vs_eps.png", title),
        plots.accuracy_vs_timesteps(document["rows"], folder / "accuracy_vs_T.png", title),
    ]
    for row in document["rows"]:
        for key, detail in row["details"].items():
            name = f"breaks_{row['model'].replace(' ', '').replace('=', '')}_eps{key}.png"
            images.append(plots.breaks_per_run(detail, folder / name,
                                               f"{row['model']}, eps={float(key):.4g}"))  # fmt: skip
    images = [p for p in images if p is not None]
    report = markdown_report(document, [p.name for p in images])
    atomic_write(folder / "report.md", lambda tmp: Path(tmp).write_text(report))
    write_json(folder / "results.json", document)
    return [folder / "report.md", folder / "results.json", *images]


def write_adversarial(path: str, adversarial: dict, labels) -> None:
    """The worst points per (model setting, eps) and the labels, as one .npz file (atomic)."""
    import numpy as np

    arrays = {"labels": labels.cpu().numpy()}
    arrays.update({name: images.numpy() for name, images in adversarial.items()})

    def write(tmp) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    atomic_write(Path(path), write)


def _profile_report(folder, snn, x, y, model_file, data, batch_size) -> list[Path]:
    """Spikes, operations and energy at the model's T on the first 1,000 clean images
    (docs/export.md)."""
    from convertsnn.eval.energy import profile_snn
    from convertsnn.eval.energy_report import write_profile_report

    profile = profile_snn(snn, x[:1000], y[:1000], batch_size, model=str(model_file), data=data)
    return write_profile_report(folder, profile)[1:]  # [0] is report.md, already listed


@click.command("evaluate")
@click.argument("model_file", type=click.Path(dir_okay=False))
@click.option(
    "--data", required=True, help="Test images: dataset name or .npz (test split by default)."
)
@click.option(
    "--timesteps", "-T", default=None, help="Comma-separated T values (default: the model's T)."
)
@click.option(
    "--dither",
    default=None,
    type=float,
    help="Evaluate with every neuron's initial membrane drawn per input from theta * U[v_init - "
    "a, v_init + a] (this a; 0: off; default: the model's; not saved). EOT applies.",
)
@click.option(
    "--suite",
    type=click.Choice(list(SUITES)),
    default=None,
    help="Attack suite: per-sample worst case over attacks and gradient modes, with early "
    "exit; s001 is seed 001's protocol with one number per attack family (see "
    "docs/evaluation.md).",
)
@click.option(
    "--attack",
    default="none",
    show_default=True,
    help=f"A single attack instead of a suite: none, {', '.join(ATTACK_OPTIONS)}.",
)
@click.option(
    "--eps", default="8/255", show_default=True, help="Comma-separated radii, e.g. 2/255,8/255."
)
@click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf", show_default=True)
@click.option("--steps", default=None, type=int, help="Iterations (default: 20 PGD, 100 APGD).")
@click.option("--alpha", default=None, help="PGD step size (default 2.5*eps/steps).")
@click.option("--restarts", default=None, type=int, help="Random restarts (default 1).")
@click.option("--loss", type=click.Choice(["ce", "dlr"]), default=None, help="PGD loss (ce).")
@click.option(
    "--queries",
    default=None,
    type=int,
    help="Square queries (default 5000); pgd-search: random-search proposals after PGD (100).",
)
@click.option("--targets", default=None, type=int, help="APGD-T target classes (default 9).")
@click.option(
    "--gradient",
    default=None,
    help="Gradient mode of a single attack: native, bptt:FAMILY[:G][:abs][:detach], bptr, ann, "
    "adaptive[:FAMILY[:A]][:detach] (widths relative to the threshold unless :abs).",
)
@click.option(
    "--surrogate",
    default=None,
    help="The model's BPTT surrogate for the attacks (FAMILY[:G][:abs][:detach]).",
)
@click.option(
    "--eot",
    default=None,
    type=int,
    help="Draws per gradient and per accuracy estimate (default 20 for random models: "
    "Poisson/Gaussian encoders, dithered neurons; else 1).",
)
@click.option(
    "--autoattack",
    type=click.Choice(["standard", "rand"]),
    default=None,
    help="Also run pyautoattack on the SNN as a cross-check.",
)
@click.option(
    "--autoattack-mode",
    default="native",
    show_default=True,
    help="Gradient mode AutoAttack sees (native = the model's surrogate).",
)
@click.option(
    "--sanity/--no-sanity", default=True, show_default=True, help="Run the sanity checks."
)
@click.option("--attack-timesteps", default=None, help="Attack only at these T (default: every T).")
@click.option(
    "--ann/--no-ann",
    default=True,
    show_default=True,
    help="Also evaluate the source ANN (same weights, ReLU).",
)
@click.option("--limit", default=None, type=int, help="Use only the first N test images.")
@click.option("--data-dir", type=click.Path(), help="Where torchvision datasets are stored.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for random starts.")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option(
    "--report", type=click.Path(file_okay=False), help="Write report.md, JSON and PNGs here."
)
@click.option(
    "--save-adversarial",
    type=click.Path(dir_okay=False),
    help="Write the worst point found per image (and the labels) to this .npz file, one "
    "array per model setting and eps.",
)
@click.option(
    "--transfer-from",
    default=None,
    help="Also transfer adversarial examples from this model (an SNN file or any source "
    "`convertsnn convert` reads: .onnx, checkpoint, timm:, robustbench:, zoo:).",
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    help="State directory: progress is saved there and a rerun with the same settings resumes.",
)
@runtime_option
@layout_option
@device_option
@click.pass_context
def command(
    ctx, model_file, data, timesteps, dither, suite, attack, eps, norm, steps, alpha, restarts, loss,
    queries, targets, gradient, surrogate, eot, autoattack, autoattack_mode, sanity,
    attack_timesteps, ann, limit, data_dir, batch_size, seed, out, report, save_adversarial,
    transfer_from, resume, runtime, layout, device,
) -> None:  # fmt: skip
    """Evaluate the SNN in MODEL_FILE (written by `convertsnn convert`, or zoo:NAME)."""
    import torch

    if suite and attack != "none":
        raise ConvertSNNError("give either --suite or --attack, not both")
    if suite and gradient:
        raise ConvertSNNError("--gradient is for a single --attack; suites choose their modes")
    if batch_size < 1 or (eot is not None and eot < 1):
        raise ConvertSNNError("--batch-size and --eot must be at least 1")
    evaluation = None
    if suite:
        evaluation = get_suite(suite)
    elif attack != "none":
        options = {"steps": steps, "restarts": restarts, "loss": loss, "queries": queries,
                   "targets": targets,
                   "alpha": parse_number_list(alpha, "--alpha")[0] if alpha else None}  # fmt: skip
        evaluation = single_attack_suite(attack, attack_params(attack, options), gradient)
    if (autoattack or resume or save_adversarial or transfer_from) and evaluation is None:
        raise ConvertSNNError(
            "--autoattack, --resume, --save-adversarial and --transfer-from need --suite or "
            "--attack"
        )
    if save_adversarial and not str(save_adversarial).endswith(".npz"):
        raise ConvertSNNError(f"--save-adversarial needs a .npz file name, got {save_adversarial}")
    if transfer_from:
        evaluation = with_transfer_source(evaluation, transfer_from)
    for path in (out, report and Path(report) / "report.md", save_adversarial):
        if path:
            check_writable(path)
    torch.manual_seed(seed)
    device = resolve_device(device)
    snn = load_snn(resolve_model_file(model_file), device)
    snn.runtime = runtime
    snn.layout = layout
    if dither is not None:
        snn.set_dither(dither)
    ts = parse_int_list(timesteps, "--timesteps") if timesteps else [snn.timesteps]
    for value in ts:
        check_timesteps(value, "--timesteps")
    dataset = load_dataset(data, split="test", data_dir=data_dir, limit=limit)
    check_dataset_fits(dataset, data, snn.input_size, snn.metadata.get("num_classes"))
    eps_values = parse_number_list(eps, "--eps") if evaluation else []
    if any(e < 0 for e in eps_values):
        raise ConvertSNNError(f"--eps must be >= 0, got {eps}")
    draws = eot if eot is not None else default_eot(snn)
    settings = {
        "model": str(model_file), "data": dataset.name, "images": len(dataset),
        "timesteps": ts, **({"dither": dither} if dither is not None else {}), "eps": eps_values, "norm": norm, "eot": draws, "seed": seed,
        "batch_size": batch_size, "surrogate": surrogate, "ann": ann,
        "suite": {"name": evaluation.name, "description": evaluation.description}
        if evaluation else None,
    }  # fmt: skip
    state = StateDir(resume, settings) if resume else None
    x, y = (t.to(device) for t in dataset.tensors())
    if transfer_from:  # load it once here, so a bad source fails before any attack runs
        load_source(transfer_from, device)
    adversarial = {} if save_adversarial else None
    evaluation_settings = EvalSettings(norm=norm, eot=draws, batch_size=batch_size, seed=seed,
                                       sanity=sanity, autoattack=autoattack,
                                       autoattack_mode=autoattack_mode)  # fmt: skip
    rows = evaluate_robustness(
        snn, x, y, ts, eps_values, evaluation, evaluation_settings, include_ann=ann,
        attack_timesteps=parse_int_list(attack_timesteps, "--attack-timesteps") if attack_timesteps else None,
        surrogate=surrogate, state=state, adversarial=adversarial,
    )  # fmt: skip
    click.echo(f"{model_file} on {len(dataset)} images of {dataset.name}")
    click.echo(rows_table(rows, evaluation.name if evaluation else ""))
    for row in rows:
        for key, detail in row.details.items():
            click.echo(f"\n{row.model}, eps={float(key):.4g}: robust {100 * detail['robust']:.2f}%")
            click.echo(runs_table(detail, per_run=False))
            click.echo(f"cost: {cost_text(detail)}")
            if "groups" in detail:
                click.echo("per family: " + ", ".join(
                    f"{name} {100 * value:.2f}%" for name, value in detail["groups"].items()))  # fmt: skip
            if "autoattack" in detail:
                aa = detail["autoattack"]
                click.echo(f"AutoAttack {aa['version']} [{aa['mode']}]: {100 * aa['robust']:.2f}%")
            if detail["flags"]:
                click.echo(flags_text(detail["flags"]))
    document = {
        **settings,
        "command": command_line(ctx),
        "attack": {"name": attack, "steps": steps, "alpha": alpha, "restarts": restarts,
                   "surrogate": surrogate, "gradient": gradient, "eps": eps_values},
        "rows": rows,
        "versions": package_versions(),
    }  # fmt: skip
    write_json_out(out, document)
    if save_adversarial:
        write_adversarial(save_adversarial, adversarial, y)
        click.echo(f"wrote {save_adversarial}")
    if report:
        document = json.loads(json.dumps(document, default=vars))
        written = write_report(report, document)
        written += _profile_report(report, snn, x, y, model_file, dataset.name, batch_size)
        click.echo(f"wrote {', '.join(str(p) for p in written)}")
