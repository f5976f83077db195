"""Classification metrics with bootstrap standard errors, and paired tests against the original.

Every metric (accuracy, macro F1, per-class precision/recall/F1) carries a bootstrap standard error
from 1,000 seeded resamples of the test set (Efron & Tibshirani 1993), as the paper reports. A
compressed model is compared with the original on the *same* test images by McNemar's exact test on
the discordant predictions, and by a paired bootstrap of the accuracy difference.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn

N_BOOT = 1000


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor | np.ndarray, batch_size: int = 64,
                  device: torch.device | None = None, to_input=None) -> np.ndarray:
    """Softmax probabilities (N, C) of ``model`` on ``x``.

    Parameters
    ----------
    x : tensor (N, C, H, W), or raw images when ``to_input`` converts a slice of them to a tensor
        (keeps memory flat for large test sets).
    """
    device = device or next(model.parameters()).device
    model.eval()
    out = []
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        xb = to_input(xb) if to_input is not None else xb
        out.append(torch.softmax(model(xb.to(device)).float(), 1).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised metrics for confusion matrices of shape (..., C, C) (rows = true class)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    pred = cm.sum(-2)
    true = cm.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    accuracy = tp.sum(-1) / cm.sum((-2, -1))
    return {"accuracy": accuracy, "macro_f1": f1.mean(-1), "precision": precision, "recall": recall, "f1": f1}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix (C, C), rows true class, columns predicted class."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def bootstrap_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """Seeded resample indices (n_boot, n)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...] | list[str],
                           n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Accuracy, macro F1 and per-class precision/recall/F1, each with a bootstrap SE.

    Parameters
    ----------
    y_true, y_pred : ndarray (N,) int
    classes : sequence of str
    n_boot : int
        Bootstrap resamples (1,000 by default).
    seed : int
        Seed of the resampling; the same seed gives the same resamples for every model, so SEs of
        different models are computed on the same resampled test sets.

    Returns
    -------
    dict
        ``accuracy``, ``accuracy_se``, ``macro_f1``, ``macro_f1_se``, ``per_class`` (name ->
        precision, precision_se, recall, recall_se, f1, f1_se, support), ``confusion_matrix``
        (list of lists), ``n``.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    c = len(classes)
    cm = confusion(y_true, y_pred, c)
    point = _metrics_from_confusion(cm)
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    codes = y_true[idx] * c + y_pred[idx]  # (B, N)
    offsets = (np.arange(n_boot) * c * c)[:, None]
    cms = np.bincount((codes + offsets).ravel(), minlength=n_boot * c * c).reshape(n_boot, c, c)
    boot = _metrics_from_confusion(cms)
    se = {k: v.std(0, ddof=1) for k, v in boot.items()}
    per_class = {
        name: {
            "precision": float(point["precision"][k]), "precision_se": float(se["precision"][k]),
            "recall": float(point["recall"][k]), "recall_se": float(se["recall"][k]),
            "f1": float(point["f1"][k]), "f1_se": float(se["f1"][k]),
            "support": int(cm[k].sum()),
        }
        for k, name in enumerate(classes)
    }
    return {
        "n": int(len(y_true)),
        "accuracy": float(point["accuracy"]), "accuracy_se": float(se["accuracy"]),
        "macro_f1": float(point["macro_f1"]), "macro_f1_se": float(se["macro_f1"]),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def paired_comparison(y_true: np.ndarray, pred_ref: np.ndarray, pred_new: np.ndarray,
                      n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Compare two models' predictions on the same test images.

    Returns
    -------
    dict
        ``p_value`` (McNemar's exact two-sided test on the discordant pairs; 1.0 when there are none),
        ``accuracy_delta`` (new minus reference), ``accuracy_delta_se`` (paired bootstrap),
        ``discordant`` ({"ref_only": n, "new_only": n}).
    """
    y_true = np.asarray(y_true)
    ok_ref, ok_new = np.asarray(pred_ref) == y_true, np.asarray(pred_new) == y_true
    ref_only = int(np.sum(ok_ref & ~ok_new))
    new_only = int(np.sum(~ok_ref & ok_new))
    n_disc = ref_only + new_only
    p = 1.0 if n_disc == 0 else float(binomtest(min(ref_only, new_only), n_disc, 0.5).pvalue)
    diff = ok_new.astype(np.float64) - ok_ref.astype(np.float64)
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    boot = diff[idx].mean(1)
    return {"p_value": min(p, 1.0), "accuracy_delta": float(diff.mean()),
            "accuracy_delta_se": float(boot.std(ddof=1)),
            "discordant": {"ref_only": ref_only, "new_only": new_only}}


def fidelity(prob_ref: np.ndarray, prob_new: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Agreement of top-1 predictions and mean KL(original || compressed), with bootstrap SEs.

    These separate configurations whose accuracies tie on a small test set.
    """
    eps = 1e-12
    agree = (prob_ref.argmax(1) == prob_new.argmax(1)).astype(np.float64)
    kl = np.sum(prob_ref * (np.log(prob_ref + eps) - np.log(prob_new + eps)), axis=1)
    kl = np.maximum(kl, 0.0)  # rounding can give -1e-17 for identical rows
    idx = bootstrap_indices(len(agree), n_boot, seed)
    return {"agreement": float(agree.mean()), "agreement_se": float(agree[idx].mean(1).std(ddof=1)),
            "kl_to_original": float(kl.mean()), "kl_to_original_se": float(kl[idx].mean(1).std(ddof=1))}
