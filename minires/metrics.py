"""Per-class accuracy and the confusion matrix of a classifier's predictions,
as numbers and as a text table (``minires eval`` prints them).

Rows of the matrix are the true classes, columns the predicted ones (the
convention of scikit-learn): ``cm[i, j]`` counts the images of class ``i``
predicted as ``j``; the diagonal holds the correct ones.
"""
import numpy as np


def confusion_matrix(labels, predictions, num_classes):
    """(num_classes x num_classes) int64 counts; labels and predictions are
    class indices in [0, num_classes)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape:
        raise ValueError(f"confusion_matrix: {labels.size} labels but "
                         f"{predictions.size} predictions")
    for name, a in (("labels", labels), ("predictions", predictions)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} must be in [0, {num_classes}), got "
                             f"the range [{a.min()}, {a.max()}]")
    flat = np.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    return flat.reshape(num_classes, num_classes)


def per_class(cm, classes):
    """``[{"class", "n", "correct", "accuracy"}]`` per row of ``cm``; the
    accuracy of a class with no images is None."""
    rows = []
    for i, name in enumerate(classes):
        n, correct = int(cm[i].sum()), int(cm[i, i])
        rows.append({"class": name, "n": n, "correct": correct,
                     "accuracy": correct / n if n else None})
    return rows


def _short_names(classes, width=5):
    """Column headers: the names cut to ``width`` characters when that keeps
    them apart (CIFAR-10's do), else the class indices."""
    short = [str(c)[:width] for c in classes]
    return short if len(set(short)) == len(short) else [str(i) for i in range(len(classes))]


def format_report(cm, classes):
    """Per-class accuracy, then the confusion matrix, as aligned text."""
    name_w = max(len("class"), *(len(str(c)) for c in classes))
    n_w = max(len("images"), len(str(int(cm.sum()))))
    lines = [f"{'class':<{name_w}}  {'images':>{n_w}}  accuracy"]
    for r in per_class(cm, classes):
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        lines.append(f"{r['class']:<{name_w}}  {r['n']:>{n_w}}  {acc:>8}")
    heads = _short_names(classes)
    cell = max(5, len(str(int(cm.max()))) if cm.size else 1, *(len(h) for h in heads))
    lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
              " " * name_w + "".join(f" {h:>{cell}}" for h in heads)]
    for name, row in zip(classes, cm):
        lines.append(f"{name:<{name_w}}" + "".join(f" {int(v):>{cell}}" for v in row))
    return "\n".join(lines)
