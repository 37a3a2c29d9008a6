"""What a person reads about a study: its progress, the best trial and its ready-to-run config, a table of all
trials and Optuna's plots (optimization history, parallel coordinates, parameter importances, learning
curves)."""

from __future__ import annotations

import logging
import time
import warnings
from functools import partial
from pathlib import Path

from visiontrain.config import load_config, to_yaml
from visiontrain.infra.fileio import write_json, write_text
from visiontrain.sweep.study import StudyDir
from visiontrain.sweep.worker import counts, progress_line

log = logging.getLogger(__name__)


def _duration(trial) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete
    return (end - trial.datetime_start).total_seconds() if end else None


def trial_rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "last_epoch": max(t.intermediate_values) if t.intermediate_values else None,
                     "seconds": _duration(t), "cpu_seconds": t.user_attrs.get("cpu_seconds"),
                     "worker": t.user_attrs.get("worker"), "params": dict(t.params),
                     "error": t.user_attrs.get("error")})
    return rows


def status_text(study_dir: StudyDir) -> str:
    spec = study_dir.spec()
    study = study_dir.open(spec)
    lines = [f"study {study_dir.path}: {progress_line(study, spec)}"]
    for t in study.get_trials(deepcopy=False):
        if t.state.name != "RUNNING":
            continue
        lease = study_dir.leases / f"{t.number:04d}"
        age = time.time() - lease.stat().st_mtime if lease.exists() else None
        health = (f"lease renewed {age:.0f} s ago" if age is not None and age <= spec.lease_seconds
                  else "lease expired: the next worker takes it over")
        epochs = max(t.intermediate_values) if t.intermediate_values else 0
        lines.append(f"  trial {t.number}: worker {t.user_attrs.get('worker')}, {epochs} epoch(s) reported, {health}")
    best = _best(study)
    if best is not None:
        lines.append(f"  best: trial {best.number}, {spec.metric} {best.value:.4f}, {best.params}")
    return "\n".join(lines)


def _best(study):
    return study.best_trial if counts(study)["complete"] else None


def write_summary(study_dir: StudyDir, out: Path | None = None) -> str:
    """Write OUT (default STUDY/summary): trials.md, trials.json, best.yaml and the plots; return the text shown."""
    spec = study_dir.spec()
    study = study_dir.open(spec)
    out = out or study_dir.path / "summary"
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    write_json(out / "trials.json", rows)
    table = _markdown(rows, spec.metric, [p.key for p in spec.space])
    write_text(out / "trials.md", table)
    text = [f"study {study_dir.path}: {progress_line(study, spec)}"]
    best = _best(study)
    if best is not None:
        overrides = spec.trial_overrides(best.params, f"runs/{study_dir.path.name}_best")
        cfg = load_config(spec.config, overrides)
        header = (f"# The best trial of study {study_dir.path} (trial {best.number}: {spec.metric} "
                  f"{best.value:.4f}); train it with: python train.py -c {out / 'best.yaml'}\n")
        write_text(out / "best.yaml", header + to_yaml(cfg))
        text.append(f"best: trial {best.number}, {spec.metric} {best.value:.4f}: "
                    + " ".join(f"{k}={v}" for k, v in best.params.items()) + f" -> {out / 'best.yaml'}")
    text.extend(_plots(study, out, spec.metric))
    return "\n".join([*text, "", table])


def _markdown(rows: list[dict], metric: str, keys: list[str]) -> str:
    head = ["trial", "state", metric, "epochs", "minutes", "CPU minutes", *keys, "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        value = f"{r['value']:.4f}" if r["value"] is not None else "-"
        minutes = f"{r['seconds'] / 60:.1f}" if r["seconds"] is not None else "-"
        cpu = f"{r['cpu_seconds'] / 60:.1f}" if r["cpu_seconds"] is not None else "-"
        params = [_fmt(r["params"].get(k)) for k in keys]
        cells = [str(r["number"]), r["state"].lower(), value, str(r["last_epoch"] or "-"), minutes, cpu, *params,
                 (r["error"] or "")[:80]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plots(study, out: Path, metric: str) -> list[str]:
    """Optuna's matplotlib plots; those a study cannot draw yet (too few finished trials) are named, not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as plots

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
    finished = counts(study)["complete"]
    wanted = {"optimization_history": plots.plot_optimization_history,
              "intermediate_values": plots.plot_intermediate_values,
              "parallel_coordinate": plots.plot_parallel_coordinate,
              # PED-ANOVA: Optuna's importance measure that needs no scikit-learn (fANOVA does)
              "param_importances": partial(plots.plot_param_importances, evaluator=PedAnovaImportanceEvaluator())}
    written, skipped = [], []
    for name, plot in wanted.items():
        if finished < (2 if name == "param_importances" else 1):
            skipped.append(name)
            continue
        try:
            axes = plot(study)
        except (ValueError, RuntimeError) as err:  # e.g. importances of a parameter that never varied
            skipped.append(f"{name} ({str(err).splitlines()[0]})")
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(f"{name}.png")
    lines = [f"plots in {out}: {', '.join(written) or 'none yet'}"]
    if skipped:
        lines.append(f"not drawn yet: {', '.join(skipped)}")
    return lines
