"""What the commands print: training progress, metric tables, the model summary of ``info``."""

from __future__ import annotations

import sys
import time

import numpy as np

from ..gp.config import Config


class TrainProgress:
    """progress(event, info) callback of forcegp.training.pipeline.train_model, drawn on stderr.

    On a terminal one line is rewritten in place; otherwise (logs, CliRunner) one line per epoch.
    """

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.inline = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.open_line = False

    def _line(self, text: str, final: bool = False) -> None:
        if self.inline:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
            self.open_line = not final
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _close(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False

    def __call__(self, event: str, info: dict) -> None:
        if event == "message":
            self._close()
            self._line(info["text"], final=True)
        elif event == "epoch":
            width = 24
            filled = int(round(width * info["epoch"] / info["epochs"]))
            bar = "#" * filled + "-" * (width - filled)
            text = (
                f"epoch {info['epoch']:>{len(str(info['epochs']))}}/{info['epochs']} [{bar}] "
                f"loss {info['loss']:.4f}  {info['seconds']:.0f} s"
            )
            self._line(text, final=info["epoch"] == info["epochs"])
        elif event == "fit":
            done, total = info["done"], info["total"]
            self._line(f"posterior fit: {done}/{total} structures", final=done >= total)
        elif event == "evaluate":
            self._close()


def metrics_table(metrics: dict, title: str | None = None) -> str:
    """Errors in meV and meV/Å, coverages in %, as a small aligned table."""

    def fmt(value, scale=1.0, digits=2):
        if value is None or value != value:  # None or NaN
            return "n/a"
        return f"{value * scale:.{digits}f}"

    rows = [
        ("frames", str(metrics.get("n_frames", "?")), ""),
        ("energy MAE", fmt(metrics.get("energy_mae"), 1e3), "meV"),
        ("energy RMSE", fmt(metrics.get("energy_rmse"), 1e3), "meV"),
        ("forces MAE", fmt(metrics.get("forces_mae"), 1e3), "meV/Å"),
        ("forces RMSE", fmt(metrics.get("forces_rmse"), 1e3), "meV/Å"),
        ("energy 95% coverage", fmt(metrics.get("energy_coverage_95"), 100, 1), "%"),
        ("forces 95% coverage", fmt(metrics.get("forces_coverage_95"), 100, 1), "%"),
        ("std-error Spearman", fmt(metrics.get("forces_std_error_spearman"), 1, 3), ""),
    ]
    return key_value_table(rows, title)


def key_value_table(rows, title: str | None = None) -> str:
    width = max(len(name) for name, *_ in rows)
    vwidth = max(len(str(value)) for _, value, *_ in rows)
    lines = [title] if title else []
    for name, value, *unit in rows:
        suffix = f" {unit[0]}" if unit and unit[0] else ""
        lines.append(f"  {name:<{width}}  {str(value):>{vwidth}}{suffix}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- info


def model_summary(gp, header: dict) -> dict:
    """The facts ``forcegp info`` shows, as plain data (eV, Å, eV/Å)."""
    from ..data import formula

    hyper, stats = gp.hyper, gp.stats
    scale = float(stats.energy_scale)
    lengthscale = np.asarray(hyper.lengthscale)
    history = header.get("history") or []
    training = header.get("training") or {}
    return {
        "formula": formula(gp.numbers),
        "numbers": list(gp.numbers),
        "config": gp.config.to_dict(),
        "n_permutations": gp.n_copies,
        "n_basis": gp.config.n_basis,
        "training": training,
        "metrics": header.get("metrics") or {},
        "hyperparameters": {
            "energy_mean_eV": float(stats.energy_mean),
            "energy_scale_eV": scale,
            "noise_energy_eV": float(hyper.noise_energy) * scale,
            "noise_forces_eV_per_Ang": float(hyper.noise_force) * scale,
            # gamma of the input-dependent noise (gp.misfit); 0: constant noise
            "misfit_gamma": float((training.get("calibration") or {}).get("misfit_gamma", 0.0)),
            # why it is constant where its pass was skipped ("memory"), else None
            "misfit_skipped": (training.get("calibration") or {}).get("misfit_skipped"),
            "scale": float(hyper.scale),
            "scale_linear": float(hyper.scale_linear),
            "scale_quadratic": float(hyper.scale_quadratic),
            "scale_pair": None if hyper.raw_scale_pair is None else float(hyper.scale_pair),
            "temperature_mean": float(np.mean(np.asarray(hyper.temperature))),
            "lengthscale_min": float(lengthscale.min()),
            "lengthscale_median": float(np.median(lengthscale)),
            "lengthscale_max": float(lengthscale.max()),
        },
        "history": {
            "epochs": len(history),
            "first_loss": history[0].get("loss") if history else None,
            "last_loss": history[-1].get("loss") if history else None,
            "skipped_steps": history[-1].get("skipped_steps") if history else None,
        },
        "has_posterior": gp.posterior is not None,
        "forcegp_version": header.get("forcegp_version"),
        "versions": header.get("versions") or {},
    }


def _explicit_shape(cfg: dict) -> str:
    if cfg.get("descriptor") != "atomic":
        return f"(PCA {cfg['explicit_dim']}, cubic {cfg['explicit_cubic']})"
    config = Config(**cfg)
    out = "(per element, degree 2)"
    if cfg.get("env_body4"):
        n, l_max = cfg["env_body4"], cfg["env_body4_lmax"]
        n3 = config.body3_channels
        out = f"(per element, body orders 2-4 on {n} channels, l <= {l_max})"
        if n3 != n:
            out = f"(per element, body orders 2-4: order 3 on {n3} channels, 4 on {n}, l <= {l_max})"
    if config.n_explicit_pair:
        bound = cfg.get("pair_bound") or 0
        out += f" + pair powers {cfg['pair_powers']}" + (f" bounded by {bound:g}" if bound else "")
    return out


def _environment(cfg: dict) -> str:
    """The atomic descriptor's settings, empty for the others."""
    if cfg.get("descriptor") != "atomic":
        return ""
    slots = cfg["env_neighbours"] or "all"
    products = "" if cfg.get("env_body4") else f", products of {Config(**cfg).explicit_q}"
    return (f" (cutoff {cfg['env_cutoff']:g} Å, {cfg['env_radial']} radial, l <= {cfg['env_lmax']}, "
            f"{cfg['env_dim']} components per element{products}, neighbours {slots})")  # fmt: skip


def _explicit_scales(h: dict) -> str:
    """linear / products, then the pair powers' own scale where the model has one."""
    out = f"{h['scale_linear']:.4g} / {h['scale_quadratic']:.4g}"
    return out if h.get("scale_pair") is None else f"{out} / pair powers {h['scale_pair']:.4g}"


def _misfit(gamma: float, skipped: str | None = None) -> str:
    if skipped:
        return f"none (constant noise: its pass was skipped, too little {skipped})"
    if not gamma:
        return "none (constant noise)"
    return f"gamma {gamma:g} (noise + gamma x posterior variance of the constant-noise fit)"


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def format_summary(path, s: dict) -> str:
    t, h, hist, cfg = s["training"], s["hyperparameters"], s["history"], s["config"]
    settings = t.get("settings") or {}
    fingerprint = t.get("fingerprint") or "?"
    lines = [
        f"{path}: forcegp model (forcegp {s['forcegp_version']})",
        f"molecule:  {s['formula']}, numbers {' '.join(map(str, s['numbers']))}",
        f"model:     M={cfg['n_inducing']} points, p={cfg['n_features']} features, "
        f"MLP width {cfg['width']}, explicit {cfg['explicit']} {_explicit_shape(cfg)}, "
        f"descriptor {cfg['descriptor']}{_environment(cfg)}, "
        f"{s['n_permutations']} permutation(s), K={s['n_basis']} basis functions",
        f"training:  {t.get('n_structures', '?')} structures, fingerprint {fingerprint[:16]}, "
        f"from {', '.join(t.get('sources') or ['?'])}",
        "settings:  " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        f"history:   {hist['epochs']} epochs, loss {_num(hist['first_loss'])} -> "
        f"{_num(hist['last_loss'])}, "
        f"{hist['skipped_steps']} skipped steps",
    ]
    rows = [
        ("noise energy", f"{h['noise_energy_eV'] * 1e3:.3f}", "meV"),
        ("noise forces", f"{h['noise_forces_eV_per_Ang'] * 1e3:.3f}", "meV/Å"),
        ("misfit noise", _misfit(h["misfit_gamma"], h.get("misfit_skipped")), ""),
        ("energy mean / scale", f"{h['energy_mean_eV']:.4f} / {h['energy_scale_eV']:.4f}", "eV"),
        # Amplitudes of the blocks' contributions to the standardised energy (energy - mean) /
        # scale: multiply by the energy scale for eV.
        ("kernel scale", f"{h['scale']:.4g}", "x energy scale"),
        ("explicit scales", _explicit_scales(h), "x energy scale"),
        ("mean temperature", f"{h['temperature_mean']:.4g}", ""),
        (
            "lengthscales",
            f"{h['lengthscale_min']:.3g} / {h['lengthscale_median']:.3g} / {h['lengthscale_max']:.3g}",
            "(min / median / max)",
        ),
    ]
    lines.append(key_value_table(rows, "hyperparameters:"))
    validation = (s["metrics"] or {}).get("validation")
    if validation:
        lines.append(metrics_table(validation, "validation:"))
    versions = s["versions"]
    if versions:
        lines.append("versions:  " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return "\n".join(lines)
