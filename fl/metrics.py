"""Classification metrics per client, and their pooled ("global") versions on the server.

A client reports its own exact metrics plus privacy-safe summaries — a confusion matrix and, per
class, histograms of the predicted probability for positives and negatives — from which the server
computes pooled accuracy and balanced accuracy exactly and pooled AUROC to within a bin width.
No per-image prediction leaves the client.
"""

from __future__ import annotations

import math

import numpy as np

BINS = 200


def _auroc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC with ties counted half; NaN if one class is absent."""
    if y.min(initial=1) == y.max(initial=0) or len(y) == 0:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def auroc(y: np.ndarray, probs: np.ndarray) -> float:
    """Binary: AUROC of class 1; multi-class: macro one-vs-rest over classes present."""
    if probs.shape[1] == 2:
        return _auroc_binary((y == 1).astype(int), probs[:, 1])
    values = [_auroc_binary((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    return cm


def from_confusion(cm: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy = mean recall over classes present)."""
    total = cm.sum()
    acc = float(np.trace(cm) / total) if total else math.nan
    support = cm.sum(axis=1)
    recalls = [cm[c, c] / support[c] for c in range(len(cm)) if support[c] > 0]
    return acc, float(np.mean(recalls)) if recalls else math.nan


def score_histograms(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(classes, 2, BINS) counts of p_c among negatives (0) and positives (1) of class c."""
    n_classes = probs.shape[1]
    hist = np.zeros((n_classes, 2, BINS), dtype=np.int64)
    bins = np.clip((probs * BINS).astype(int), 0, BINS - 1)
    for c in range(n_classes):
        is_pos = (y == c).astype(int)
        np.add.at(hist[c], (is_pos, bins[:, c]), 1)
    return hist


def auroc_from_histograms(hist: np.ndarray) -> float:
    """Pooled AUROC from summed histograms (same convention as ``auroc``)."""

    def one(h: np.ndarray) -> float:
        neg, pos = h[0].astype(float), h[1].astype(float)
        if pos.sum() == 0 or neg.sum() == 0:
            return math.nan
        below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    if hist.shape[0] == 2:
        return one(hist[1])
    values = [v for v in (one(hist[c]) for c in range(hist.shape[0])) if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def client_metrics(y: np.ndarray, probs: np.ndarray, loss: float) -> dict:
    """Everything a client reports about its validation split."""
    n_classes = probs.shape[1]
    cm = confusion(y, probs.argmax(axis=1), n_classes)
    acc, bacc = from_confusion(cm)
    return {
        "num-examples": len(y),
        "loss": float(loss),
        "accuracy": acc,
        "balanced_accuracy": bacc,
        "auroc": auroc(y, probs),
        "confusion": cm.reshape(-1).tolist(),
        "histograms": score_histograms(y, probs).reshape(-1).tolist(),
    }


def pooled_metrics(reports: list[dict], n_classes: int) -> dict:
    """Global metrics over all clients' validation splits."""
    n = sum(r["num-examples"] for r in reports)
    cm = sum(np.asarray(r["confusion"], dtype=np.int64).reshape(n_classes, n_classes) for r in reports)
    hist = sum(np.asarray(r["histograms"], dtype=np.int64).reshape(n_classes, 2, BINS) for r in reports)
    acc, bacc = from_confusion(cm)
    return {
        "num-examples": n,
        "loss": float(sum(r["loss"] * r["num-examples"] for r in reports) / n) if n else math.nan,
        "accuracy": acc,
        "balanced_accuracy": bacc,
        "auroc": auroc_from_histograms(hist),
    }
