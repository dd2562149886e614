"""How well a score tells new images from the reference's: AUROC, AUPR and the false alarms at 95% detections,
by scikit-learn's ROC and precision-recall curves (ties and interpolation as the literature computes them)."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def labelled(reference: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores of both sides in one array, and labels: 1 for a new image (the positive class), 0 for a reference one."""
    return np.concatenate([reference, new]), np.concatenate([np.zeros(len(reference)), np.ones(len(new))])


def separation(reference: np.ndarray, new: np.ndarray) -> dict[str, float]:
    """AUROC (the chance that a new image scores above a reference one; 0.5 = no better than chance, below 0.5 = the
    score rates new images as more usual), AUPR (new images positive) and the share of reference images flagged
    when the threshold catches 95% of the new ones."""
    scores, labels = labelled(reference, new)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auroc": float(roc_auc_score(labels, scores)), "aupr": float(average_precision_score(labels, scores)),
            "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95)])}


def roc(reference: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve: false and true positive rates at every threshold."""
    fpr, tpr, _ = roc_curve(*labelled(reference, new)[::-1])
    return fpr, tpr
