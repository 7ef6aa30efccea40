"""Build reports: ``report.md`` (tables a user can paste), ``latency.png``, and ``report.json`` last.

Invariant: ``report.json`` is written after every other file of the report, atomically,
so its presence means the build folder is complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeprune.targets.base import write_json_atomic
from edgeprune.ui import fmt, markdown_table

ROWS = ("baseline", "pruned")


def interval_text(interval: list | None, unit: str = "ms") -> str:
    """``[a, b]`` with "?" for a side these rounds could not bound; "n/a" for no interval at all."""
    if not interval or all(v is None for v in interval):
        return "n/a"
    fmt = (lambda v: f"{v:.3f}") if unit == "ms" else (lambda v: f"{v:.3f}x")
    return "[" + ", ".join("?" if v is None else fmt(v) for v in interval) + "]"


def _confidence(report: dict[str, Any]) -> str:
    m = report.get("measurement") or {}
    return f"{100 * m['confidence']:g}%" if m.get("confidence") else "95%"


def summary_table(report: dict[str, Any]) -> str:
    """Baseline vs pruned side by side: accuracy, cost, measured latency (with its interval), memory, size."""
    headers = ["model", "top-1", "MMACs", "params (M)", "p50 ms", f"p50 {_confidence(report)} interval", "p90 ms",
               "p99 ms", "mean ms", "rounds", "peak RSS MB", "size MB"]
    rows = []
    for name in ROWS:
        e = report[name]
        lat = e["latency"]
        rows.append([name, e["accuracy"], e["flops"] / 1e6, e["params"] / 1e6, lat["p50_ms"],
                     interval_text(e.get("p50_interval_ms")), lat["p90_ms"], lat["p99_ms"], lat["mean_ms"],
                     len(e.get("latency_rounds_p50_ms") or []) or None, e["peak_rss_mb"], e["size_mb"]])
    return markdown_table(headers, rows)


def budget_sentence(report: dict[str, Any]) -> str:
    """The budget's verdict in words: met / missed / undecided, with the interval, rounds and spread."""
    lat = (report.get("gates") or {}).get("latency_budget")
    if not lat:
        return ""
    word = {"met": "met", "missed": "NOT met", "undecided": "UNDECIDED (within the noise)"}.get(lat["decision"],
                                                                                              lat["decision"])
    if lat.get("share") is not None:
        figure = (f"pruned/baseline {lat['estimate']:.3f}x {interval_text(lat['interval'], 'x')} vs {lat['share']:g}x "
                  f"(= {lat['budget_ms']:.3f} ms at the baseline's {lat['baseline_ms']:.3f} ms in the same rounds)")
    else:
        figure = f"pruned {lat['measured_ms']:.3f} ms {interval_text(lat['interval'])} vs {lat['budget_ms']:.3f} ms"
    conf = f" at {100 * lat['confidence']:g}% confidence" if lat.get("confidence") else ""
    return (f"Budget {lat.get('budget_arg') or ''}: {word} — {figure}{conf}, {lat['rounds']} round(s), "
            f"round-to-round spread up to {lat['spread']:.2f}x.")


def verdict(report: dict[str, Any]) -> str:
    """One sentence: how much faster, at what accuracy, how noisy."""
    c, t = report["comparison"], report["target"]
    b, p = report["baseline"], report["pruned"]
    faster = "faster" if c["speedup_p50"] >= 1 else "SLOWER"
    spread = max((n or {}).get("spread", 1.0) for n in c["noise"].values())
    answer = (report.get("measurement") or {}).get("answer")
    decided = ""
    if answer and answer["question"]["kind"] == "faster":
        decided = (f" Paired per-round ratio pruned/baseline {answer['estimate']:.3f}x "
                   f"{interval_text(answer['interval'], 'x')} at {100 * answer['confidence']:g}% confidence: "
                   f"{answer['decision']} after {answer['rounds']} round(s).")
    budget = budget_sentence(report)
    return (f"On {t['name']} ({t['runtime']} {t['precision']}, {t['threads']} thread(s)) the pruned model is "
            f"{c['speedup_p50']:.2f}x {faster} at p50 ({b['latency']['p50_ms']:.3f} -> {p['latency']['p50_ms']:.3f} ms, "
            f"{c['latency_change_pct']:+.1f}%), top-1 {b['accuracy']:.4f} -> {p['accuracy']:.4f} "
            f"({100 * c['accuracy_change']:+.2f} points), {c['flops_ratio']:.2f}x the MACs. "
            f"Round-to-round spread of p50 was up to {spread:.2f}x." + decided + (f" {budget}" if budget else ""))


def _groups_table(report: dict[str, Any]) -> str:
    rows = [[g["group"], g["before"], g["after"], g["members"]] for g in report["prune"]["groups"]]
    return markdown_table(["group root", "channels before", "after", "coupled layers"], rows)


def _measured_cell(cand: dict[str, Any]) -> Any:
    """A candidate's measured figure; a close call measured more than once shows each figure beside the mean."""
    each = cand.get("measured_each_ms") or []
    if len(each) < 2:
        return cand.get("measured_ms")
    return f"{fmt(cand['measured_ms'])} (mean of {', '.join(fmt(x) for x in each)})"


def _candidates(search: dict[str, Any]) -> list[str]:
    """How the search chose: its strategy, the candidates arbitration compared, the accuracy-bar probes."""
    lines = [f"Search: {search.get('strategy', 'greedy')}, channel importance {search.get('importance') or 'n/a'}."]
    if search.get("candidates"):
        rows = [[c["name"] + (" (chosen)" if c["name"] == search.get("winner") else ""), c["predicted_ms"],
                 _measured_cell(c), c["holdout_top1"], c.get("probe_top1"), c["kept_share"], c["min_group_share"],
                 c.get("note", "")]
                for c in search["candidates"]]
        lines += ["", "Candidates within the budget by prediction, each measured on the target; those within it by "
                  "measurement had their BN statistics re-estimated and were scored on held-out training images "
                  "(not the test set); the finalists were then fine-tuned briefly and scored again (the best one-shot "
                  "finalist, when trained candidates were finalists too, for as long as they had trained). The trained "
                  "candidates (the knapsack schedule's and the two progressive ones, knapsack and uniform steps with "
                  "the same training) keep the weights the search trained; "
                  "the others are the original network's weights on the channels they keep:", "",
                  markdown_table(["candidate", "predicted ms", "measured ms", "held-out top-1",
                                  "after the finalists' fine-tune", "channels kept",
                                  "narrowest layer kept", "note"], rows), "", f"Why: {search.get('why', '')}."]
    if search.get("schedule"):
        lines += ["", "Knapsack schedule: " + "; ".join(
            f"step {t['step']} aimed at {t['aim_ms']:.3f} ms, predicted {t['predicted_ms']:.3f} ms, "
            f"{100 * t['kept_share']:.0f}% of channels kept (per-layer cut cap {t['max_cut']:.1f})"
            for t in search["schedule"]) + "."]
    bar = search.get("bar_search")
    if bar:
        rows = [[p["share"], p.get("measured_ms"), p.get("holdout_top1"), p.get("drop_points"), p["passed"],
                 p.get("error", "")] for p in bar["probes"]]
        lines += ["", f"Fastest model within a {bar['max_accuracy_drop']}-point accuracy bar: budgets bisected as a "
                  "share of the baseline's measured latency; each probe searched and fine-tuned, then judged on "
                  f"{bar['holdout_images']} held-out training images against the unpruned model's "
                  f"{bar['baseline_holdout_top1']:.4f} there (the test set decides nothing; "
                  "the accuracy gate checks the chosen model on it). "
                  + (f"Chosen: {bar['chosen_share']:.3f}x." if bar["found"] else
                     "No probe stayed within the bar; the least pruned one is reported."), "",
                  markdown_table(["budget share", "measured ms", "held-out top-1", "drop (points)", "within bar",
                                  "error"], rows)]
    return lines + [""]


def _block_lines(search: dict[str, Any]) -> list[str]:
    """The runtime's channel block the search used (or why it kept the grid)."""
    block = search.get("channel_block")
    if not block:
        return []
    if block["block"] == block["multiple"]:
        return [f"Channel grid: {block['multiple']} ({block['summary']}).", ""]
    return [f"Channel grid: {block['summary']}, so {len(block['groups_on_block'])} of {block['groups']} groups "
            f"(those at least two blocks wide) kept multiples of {block['block']} instead of {block['multiple']} "
            "(`--round-to N` keeps a grid of N everywhere).", ""]


def _search_section(report: dict[str, Any]) -> list[str]:
    search = report["search"]
    calibration = search.get("calibration") or {}
    chosen = search.get("chosen_attempt", len(search["attempts"]))
    attempts = markdown_table(["attempt", "aimed at ms", "predicted ms", "measured ms (before fine-tune)",
                               "retained importance", "kept"],
                              [[a["attempt"], a.get("search_target_ms", ""), a["predicted_ms"], a["measured_ms"],
                                a["retained_importance"], "**yes**" if a["attempt"] == chosen else ""]
                               for a in search["attempts"]])
    fit, table = search["predictor"], search["table"]
    return [
        "## Latency budget", "",
        f"Budget {search['budget_ms']:.3f} ms ({search['budget_arg']}) at the search's baseline measurement of "
        f"{search['baseline_measured_ms']:.3f} ms; final build measured {search['final_measured_ms']:.3f} ms "
        f"(median of its rounds): **{search.get('decision', 'met' if search['met'] else 'missed')}**.",
        "", budget_sentence(report) or "", "",
        *_candidates(search),
        *_block_lines(search),
        "The final verdict is decided on rounds of baseline and pruned measured together (here one fresh process "
        "per round timing both in alternating short bursts, so the machine's load phases cancel out of their "
        "ratio; on a device, alternating fresh processes): rounds are added until the interval for the median per-round figure lies wholly on one side of "
        "the budget, or the cap is reached (then \"undecided\": the difference is within the noise).",
        "", attempts, "",
        f"Predictor: sum of per-layer table latencies x {fit['scale']:.3f} {fit['offset_ms']:+.3f} ms"
        + (f" + {fit['weight_ms_per_million']:.3f} ms per million weights"
           + (f" beyond the first {fit['weight_floor_m']:g} million (those the cache keeps)" if fit.get("weight_floor_m") else "")
           + " (weights streamed from memory, which the table's one-layer micro-benchmarks keep in cache)"
           if fit.get("weight_ms_per_million") else "")
        + f", fitted on {fit['samples']} whole-model measurements. Table: {table['sampling']}; statistic: {table['statistic']}; "
        f"{table['rows_measured']} rows measured, {table['rows_from_cache']} from cache ({table['cache_dir']}).",
        "", *_calibration_lines(calibration), *_near_reference_lines(calibration),
        "![staircase](staircase.png)", "",
    ]


def _calibration_lines(cal: dict[str, Any]) -> list[str]:
    """The calibration's passes, where its check made it measure again (one line; nothing when one pass stood)."""
    passes = cal.get("passes") or []
    if len(passes) < 2:
        return []
    figures = "; ".join(f"pass {i + 1}: unpruned {p['unpruned_ms']:.3f} ms, check {p['check_ms']:.3f} ms"
                        + (" (**kept**)" if p["kept"] else "") for i, p in enumerate(passes))
    return [f"Calibration measured {len(passes)} times: the check right after a pass found the unpruned model more "
            f"than {100 * cal['check']['margin']:.0f}% faster than the pass had (the machine was busier while it ran); "
            f"the least disturbed pass is kept ({figures}).", ""]


def _near_reference_lines(cal: dict[str, Any]) -> list[str]:
    """Which calibration model the search's candidates were measured against (one line; nothing without one)."""
    near = cal.get("near_reference")
    if not near:
        return []
    return [f"Candidates and attempts were measured paired against the calibration model `{near['name']}` "
            f"({near['ms']:.3f} ms calibrated), the one nearest the {near['aim_ms']:.3f}-ms aim: a busy phase slows "
            "a model by its size, so a reference of the candidates' size cancels it where the unpruned model "
            "would not.", ""]


def _plot_staircase(search: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    for row in search["staircase"]:
        ax.step(row["channels"], [1000 * v for v in row["ms"]], where="post", marker="o", ms=3, label=row["layer"])
    ax.set_xlabel("output channels (input at full width)")
    ax.set_ylabel("measured latency (µs)")
    ax.set_title("latency staircase of the slowest layers", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _before_finetune(acc: float | None) -> str:
    if acc is None:  # the accuracy-bar search judged its probes on held-out training images instead
        return "Accuracy right after pruning was not measured on the test set (the accuracy-bar search's probes)."
    return f"Accuracy right after pruning, before fine-tuning: {acc:.4f}."


def _markdown(report: dict[str, Any]) -> str:
    t, cfg, env = report["target"], report["config"], report.get("environment") or {}
    lines = [
        f"# edgeprune build: {report['model']['spec'].get('name')} on {t['name']}",
        "", verdict(report), "", summary_table(report), "",
        _before_finetune(report['pruned']['accuracy_before_finetune']),
        "", "## Setup", "",
        f"- target `{t['name']}`: runtime {t['runtime']}, precision {t['precision']}, {t['threads']} thread(s), "
        f"channels rounded to multiples of {report['prune']['round_to']}",
        f"- pruning: method `{cfg['method']}`, ratio {cfg['ratio']}, fine-tuning {cfg['finetune_epochs']} epoch(s)",
        f"- data: {report['data']['name']} ({report['data']['train']} train / {report['data']['test']} test)",
        f"- latency: {_rounds_line(report)}; "
        f"{(report.get('pruned') or {}).get('latency_statistic') or 'each a fresh process'} "
        f"(warm-up {cfg['warmup_s']} s, at least {cfg['min_seconds']} s of runs, garbage collector off while timing); "
        "the table shows the round with the median p50 and the interval for the median per-round p50",
        f"- machine: {env.get('cpu_model', '?')}, {env.get('logical_cores', '?')} logical cores, "
        f"governor {env.get('governor') or 'n/a'}",
        "", "![latency](latency.png)", "",
    ]
    if report.get("search"):
        lines += _search_section(report)
    lines += ["## Channels per group", "", _groups_table(report), ""]
    return "\n".join(lines)


def _rounds_line(report: dict[str, Any]) -> str:
    m = report.get("measurement") or {}
    cfg = report["config"]
    if not m:
        return f"{cfg['rounds']} rounds per model"
    said = f"; {m['sentence']}" if m.get("sentence") else ""
    return (f"{m['rounds']} rounds per model (at least {m['min_rounds']}, at most {m['max_rounds']}: "
            f"until the question was decided at {100 * m['confidence']:g}% confidence){said}")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    for i, name in enumerate(ROWS):
        rounds = report[name].get("latency_rounds_p50_ms") or [report[name]["latency"]["p50_ms"]]
        ax.scatter(rounds, [i] * len(rounds), s=30, alpha=0.7, label=f"{name} (rounds)")
        ax.scatter([report[name]["latency"]["p50_ms"]], [i], marker="|", s=400, color="black")
    ax.set_yticks(range(len(ROWS)), [f"{n}\ntop-1 {report[n]['accuracy']:.3f}" for n in ROWS])
    ax.set_xlabel("p50 latency per round (ms)")
    ax.set_xlim(left=0)
    t = report["target"]
    ax.set_title(f"{t['name']} · {t['runtime']} {t['precision']} · {t['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(folder: Path, report: dict[str, Any]) -> None:
    folder = Path(folder)
    _plot(report, folder / "latency.png")
    if report.get("search"):
        _plot_staircase(report["search"], folder / "staircase.png")
    (folder / "report.md").write_text(_markdown(report))
    write_json_atomic(folder / "report.json", report)
