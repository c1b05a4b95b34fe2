"""Tables (terminal, Markdown) and PNG plots of a :class:`~convertsnn.eval.energy.Profile`."""

from __future__ import annotations

import os
from pathlib import Path

from convertsnn.eval.energy import SOURCE, Profile
from convertsnn.eval.plots import _pyplot, _save
from convertsnn.eval.report import format_table


def _count(value: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def _steps(profile: Profile) -> str:
    """T, with the warm-up steps of a delayed readout among them."""
    delay = profile.readout_delay
    return f"{profile.timesteps} ({delay} warm-up)" if delay else str(profile.timesteps)


def profile_tables(profile: Profile, markdown: bool = False) -> str:
    """Spiking layers, synaptic layers and totals as three tables."""
    neurons = format_table(
        ["spiking layer", "neurons", "spikes/image", "rate %", "p10 %", "median %", "p90 %",
         "silent %"],
        [[n.name, str(n.neurons), _count(n.spikes_per_image), f"{100 * n.firing_rate:.2f}",
          f"{100 * n.rate_quantiles['p10']:.2f}", f"{100 * n.rate_quantiles['p50']:.2f}",
          f"{100 * n.rate_quantiles['p90']:.2f}", f"{100 * n.silent_fraction:.1f}"]
         for n in profile.neuron_layers],
        markdown,
    )  # fmt: skip
    synapses = format_table(
        ["synaptic layer", "type", "input", "ANN MACs", "SNN ACs (SOPs)", "SNN MACs"],
        [[s.name, s.kind, s.input, _count(s.ann_macs), _count(s.snn_sops), _count(s.snn_macs)]
         for s in profile.synaptic_layers],
        markdown,
    )  # fmt: skip
    total = profile.summary()["totals"]
    totals = format_table(
        ["T", "spikes/image", "ANN MACs", "SNN SOPs", "SNN MACs", "ANN uJ", "SNN uJ",
         "SNN/ANN energy", "settles at step", "accuracy %"],
        [[_steps(profile), _count(total["spikes_per_image"]), _count(total["ann_macs"]),
          _count(total["snn_sops"]), _count(total["snn_macs"]), f"{total['ann_energy_uj']:.3g}",
          f"{total['snn_energy_uj']:.3g}", f"{total['energy_ratio_snn_ann']:.3f}",
          f"{profile.settle_step_mean:.2f}", f"{100 * profile.accuracy:.2f}"]],
        markdown,
    )  # fmt: skip
    delay = profile.readout_delay
    warmup = (
        f" The readout skips the first {delay} steps (delay:{delay}): they run and their "
        "spikes and operations are counted above, but no prediction is read before step "
        f"{delay + 1}."
        if delay
        else ""
    )
    note = (
        f"Per image, over {profile.images} images of {profile.data}; energy at "
        f"E_MAC={profile.e_mac_pj:g} pJ, E_AC={profile.e_ac_pj:g} pJ ({SOURCE}, 45 nm, fp32); "
        f"{100 * profile.settled_before_t:.1f}% of predictions settle before step T.{warmup}"
    )
    return "\n\n".join([neurons, synapses, totals, note])


def profile_markdown(profile: Profile, images: list[str] = ()) -> str:
    """A Markdown section with the tables and the plots."""
    out = [
        f"## Spikes, operations and energy of {profile.model}",
        "",
        profile_tables(profile, True),
    ]
    out += ["", *[f"![{Path(name).stem}]({name})" for name in images]]
    return "\n".join(out) + "\n"


def plot_profile(profile: Profile, folder: str | os.PathLike) -> list[Path]:
    """``firing_rates.png`` (mean and 10-90 % range per layer) and ``spikes_vs_T.png``."""
    plt = _pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    layers = profile.neuron_layers
    x = range(len(layers))
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(layers) + 2), 3.2))
    means = [100 * n.firing_rate for n in layers]
    low = [100 * n.rate_quantiles["p10"] for n in layers]
    high = [100 * n.rate_quantiles["p90"] for n in layers]
    ax.bar(x, means, color="tab:blue", label="mean")
    ax.vlines(x, low, high, color="black", label="10-90 % of neurons")
    ax.set_xticks(list(x), [n.name for n in layers], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("firing rate (spikes per neuron per step, %)")
    ax.set_title(f"{profile.model}: firing rate per layer", fontsize=9)
    ax.legend(fontsize=8)
    first = _save(fig, folder / "firing_rates.png")
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    steps = range(1, profile.timesteps + 1)
    if profile.readout_delay:
        ax.axvspan(0.5, profile.readout_delay + 0.5, color="0.9", label="warm-up (not read out)")
    for n in layers:
        ax.plot(steps, n.spikes_per_step, marker=".", label=n.name.lstrip("_"))
    ax.set_xlabel("time step t")
    ax.set_ylabel("spikes per image at step t")
    ax.set_title(f"{profile.model}: spikes vs T", fontsize=9)
    ax.legend(fontsize=6)
    second = _save(fig, folder / "spikes_vs_T.png")
    return [first, second]


def write_profile_report(folder: str | os.PathLike, profile: Profile) -> list[Path]:
    """``profile.json`` and the plots in ``folder``, and the profile section appended to its
    ``report.md`` (written first by ``convertsnn evaluate --report``) or written as
    ``profile.md`` when there is no report."""
    from convertsnn.eval.report import write_json
    from convertsnn.snn.serialize import atomic_write

    folder = Path(folder)
    plots = plot_profile(profile, folder)
    section = profile_markdown(profile, [p.name for p in plots])
    report = folder / "report.md"
    target = report if report.is_file() else folder / "profile.md"
    text = (report.read_text() + "\n" + section) if target == report else section
    atomic_write(target, lambda tmp: Path(tmp).write_text(text))
    data = write_json(folder / "profile.json", profile.summary())
    return [target, data, *plots]
