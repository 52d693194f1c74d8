"""Pictures and tables of an evaluation: PNG plots and one Markdown report.

Plots follow the capstone's figures (reconstruction-error histograms of the baseline against each
other protocol) and add ROC curves with the 1-bit-fraction detector drawn beside the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from headbits.trainer import accuracy

MAX_PANELS = 12
KEY_PROTOCOLS = ("http", "ssh", "dns", "smtp", "ftp", "smb", "quic", "unknown")
"""Drawn first in every figure: the protocols a TLS-on-443 anomaly usually turns out to be."""


def _panel_order(protocols: list[str]) -> list[str]:
    """The key protocols present, then the others in the given (most frequent first) order."""
    return [p for p in KEY_PROTOCOLS if p in protocols] + [
        p for p in protocols if p not in KEY_PROTOCOLS]


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_error_histograms(
    labels: np.ndarray, errors: np.ndarray, baseline: str, path: Path, n: int,
) -> None:
    """One panel per protocol: its held-out errors against the baseline's, log-spaced bins."""
    plt = pyplot()
    others = _panel_order([p for p, _ in _most_common(labels[labels != baseline])])[:MAX_PANELS]
    columns = 4
    rows = max(1, -(-len(others) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    positive = errors[np.isfinite(errors) & (errors > 0)]
    low, high = (positive.min(), positive.max()) if len(positive) else (1e-4, 1.0)
    bins = np.geomspace(low, high * 1.01, 40)
    base = errors[labels == baseline]
    for axis, protocol in zip(axes.flat, others, strict=False):
        axis.hist(base, bins=bins, alpha=0.6, density=True, label=f"{baseline} ({len(base)})")
        other = errors[labels == protocol]
        axis.hist(other, bins=bins, alpha=0.6, density=True, label=f"{protocol} ({len(other)})")
        axis.set_xscale("log")
        axis.set_title(f"{baseline} vs {protocol}")
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(others):]:
        axis.axis("off")
    figure.suptitle(f"Held-out reconstruction error, N = {n} bytes per direction")
    figure.supxlabel("reconstruction error (masked bit-wise cross-entropy)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_roc_curves(
    labels: np.ndarray, errors: np.ndarray, ones: np.ndarray, baseline: str, pairs: list[dict],
    path: Path, n: int,
) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 6))
    negatives = labels == baseline
    by_protocol = {pair["protocol"]: pair for pair in pairs}
    for protocol in _panel_order(list(by_protocol))[:10]:
        pair = by_protocol[protocol]
        positives = labels == pair["protocol"]
        fpr, tpr = accuracy.roc_curve(errors[negatives], errors[positives])
        line = axis.plot(fpr, tpr, label=f"{pair['protocol']} (AUROC {pair['auroc']:.3f})")[0]
        ones_fpr, ones_tpr = accuracy.roc_curve(ones[negatives], ones[positives])
        if pair["ones_fraction_auroc"] != accuracy.auroc(ones[negatives], ones[positives]):
            ones_fpr, ones_tpr = accuracy.roc_curve(-ones[negatives], -ones[positives])
        axis.plot(ones_fpr, ones_tpr, linestyle=":", color=line.get_color(), alpha=0.6)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
    axis.set_xlabel(f"false-positive rate ({baseline} flagged)")
    axis.set_ylabel("true-positive rate (other protocol flagged)")
    axis.set_title(f"{baseline} vs others, N = {n}; dotted: 1-bit-fraction detector")
    if by_protocol:
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def plot_rate_calibration(tails: np.ndarray, path: Path, n: int) -> None:
    """Measured novel-protocol alert rate on held-out normal flows against the configured rate:
    on the diagonal when the tail probabilities hold on captures the model never saw."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5))
    targets = np.geomspace(1e-4, 0.5, 40)
    measured = [float(np.mean(tails <= t)) if len(tails) else np.nan for t in targets]
    axis.loglog(targets, measured, marker=".", label=f"measured ({len(tails)} held-out flows)")
    axis.loglog(targets, targets, color="grey", linewidth=0.8, label="target")
    axis.fill_between(targets, targets / 2, targets * 2, color="grey", alpha=0.15,
                      label="0.5x-2x")
    axis.set_xlabel("configured alert rate (tail probability threshold)")
    axis.set_ylabel("measured alert rate on held-out normal flows")
    axis.set_title(f"novel-protocol alert rate calibration, N = {n}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def rates_markdown(rates: dict) -> list[str]:
    lines = [
        f"novel-protocol alert rate on {rates['normal_rows']} held-out gap-free flows of "
        f"trained protocols ({rates['normal_files']} files); recall on "
        f"{rates['never_seen_rows']} held-out flows of {len(rates['never_seen_protocols'])} "
        "protocols their fold never trained on:",
        "",
        "| configured rate | measured | 95% interval (files) | within 0.5x-2x | never-seen "
        "recall | per class (measured) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rates["targets"]:
        per_class = ", ".join(f"{name} {value['rate']:.4f}"
                              for name, value in row["per_class"].items())
        lines.append(f"| {row['target']:g} | {row['measured']:.4f} | {row['low']:.4f}-"
                     f"{row['high']:.4f} | {'yes' if row['within_half_to_double'] else 'no'} | "
                     f"{row['never_seen_recall']:.3f} | {per_class} |")
    return lines


def leave_protocol_out_markdown(result: dict) -> list[str]:
    lines = [
        f"## Leave-protocol-out, N = {result['n']}",
        "",
        "Each protocol's model never saw it; recall is the share of its graded, gap-free flows "
        "alerting novel-protocol, the normal rate that of held-out flows of trained protocols.",
        "",
        "| left out | files | flows | AUROC | recall at 0.001 | normal rate at 0.001 | "
        "recall at 0.01 | normal rate at 0.01 | most novel normal flows |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["protocols"]:
        worst = ", ".join(f"{k} {v}" for k, v in row["most_novel_normal_labels"].items())
        lines.append(f"| {row['protocol']} | {row['files']} | {row['novel_rows']} | "
                     f"{row['auroc']:.3f} | {row['recall_at_0.001']:.3f} | "
                     f"{row['normal_rate_at_0.001']:.4f} | {row['recall_at_0.01']:.3f} | "
                     f"{row['normal_rate_at_0.01']:.4f} | {worst} |")
    return lines


def plot_confusion(classifier: dict, path: Path, n: int) -> None:
    plt = pyplot()
    matrix = np.array(classifier["confusion"], dtype=np.float64)
    names = classifier["classes"]
    row_sums = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.35 * len(names) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix / row_sums, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true (held-out captures)")
    axis.set_title(f"Classifier, N = {n}: macro-F1 {classifier['macro_f1']:.3f}")
    figure.colorbar(image, ax=axis, fraction=0.046, label="fraction of the true class")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _most_common(values: np.ndarray) -> list[tuple[str, int]]:
    names, counts = np.unique(values.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(str(names[i]), int(counts[i])) for i in order]


def pairs_markdown(pairs: list[dict], baseline: str) -> list[str]:
    lines = [
        f"| {baseline} vs | gap-free flows | files | autoencoder AUROC | 95% interval (files) | "
        "alert rule AUROC | 1-bit fraction AUROC | all flows | all-flows autoencoder | "
        "all-flows alert rule | all-flows 1-bit fraction | parser-labelled flows | "
        "parser-labelled autoencoder (interval) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pair in pairs:
        lines.append(
            f"| {pair['protocol']} | {pair['rows']} | {pair['files']} | {pair['auroc']:.3f} | "
            f"{pair['auroc_low']:.3f}-{pair['auroc_high']:.3f} | {pair['alert_auroc']:.3f} | "
            f"{pair['ones_fraction_auroc']:.3f} | {pair['rows_all_flows']} | "
            f"{pair['auroc_all_flows']:.3f} | {pair['alert_auroc_all_flows']:.3f} | "
            f"{pair['ones_fraction_auroc_all_flows']:.3f} | {pair['rows_parser_labels']} | "
            f"{pair['auroc_parser_labels']:.3f} ({pair['auroc_parser_labels_low']:.3f}-"
            f"{pair['auroc_parser_labels_high']:.3f}) |"
        )
    return lines


def write_markdown(results: dict, path: Path) -> None:
    baseline = results["baseline"]
    lines = [
        "# headbits evaluation",
        "",
        f"{results['evaluated_rows']} flows from {results['evaluated_files']} capture files, "
        f"{results['folds']}-fold cross-validation over files; each fold's model also saw "
        f"{results['generated_training_rows']} generated flows. The autoencoder learns "
        f"`{baseline}` only; AUROC compares held-out `{baseline}` flows with each other "
        "protocol's, and the interval resamples capture files, not flows. *Autoencoder* ranks "
        "by reconstruction error alone (the capstone's method); *alert rule* ranks by how far a "
        f"flow is past the scorer's rule for a flow that claims `{baseline}` (error over "
        "threshold, or another protocol more probable than the claimed one). The figures are taken "
        "on gap-free flows, whose heads start at the stream start in both directions (a "
        "mid-stream head cannot be judged by opening bytes and never alerts by default); "
        "*all flows* repeats them with mid-stream heads counted; *parser-labelled* repeats the "
        "autoencoder's on the gap-free flows whose label Zeek, nDPI or Arkime confirmed (tshark's "
        "dissection, the label where no parser covers a flow, follows well-known ports and names "
        "a STARTTLS connection by its later TLS layer); *all others* pools every labelled "
        f"protocol but `{baseline}`.",
        "",
    ]
    for n, result in results["by_n"].items():
        classifier = result["classifier"]
        lines += [f"## N = {n} bytes per direction", ""]
        lines += pairs_markdown(result["pairs"], baseline)
        lines += [
            "",
            f"Classifier macro-F1 over {len(classifier['classes']) - 1} protocol classes "
            f"({classifier['rows']} held-out flows): **{classifier['macro_f1']:.3f}**; "
            "a linear softmax on bits + mask trained on the same split (the reference): "
            f"{classifier['linear_reference_macro_f1']:.3f}",
            "",
            *rates_markdown(result["alert_rates"]),
            "",
            f"![rates](rates_n{n}.png)",
            f"![errors](errors_n{n}.png)",
            f"![roc](roc_n{n}.png)",
            f"![confusion](confusion_n{n}.png)",
            "",
        ]
    if "leave_protocol_out" in results:
        lines += leave_protocol_out_markdown(results["leave_protocol_out"])
    path.write_text("\n".join(lines) + "\n")


def summary_table(results: dict) -> str:
    """The headline AUROCs and macro-F1 per N, for the terminal."""
    lines = []
    for n, result in results["by_n"].items():
        classifier = result["classifier"]
        lines.append(f"N = {n}: classifier macro-F1 {classifier['macro_f1']:.3f} "
                     f"(linear reference {classifier['linear_reference_macro_f1']:.3f})")
        lines += pairs_markdown(result["pairs"], results["baseline"])
        lines += ["", *rates_markdown(result["alert_rates"]), ""]
    if "leave_protocol_out" in results:
        lines += leave_protocol_out_markdown(results["leave_protocol_out"])
    return "\n".join(lines)
