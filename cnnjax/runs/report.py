"""The figures and tables the studies made by hand, made for every run.

At the end of a run (and with `python -m cnnjax.evaluate` for any run with a
checkpoint) the workdir gets:
- `curves.png`: training and validation loss and accuracy per epoch;
- `confusion_matrix.png` (counts, class names on both axes) and `.csv`;
- `classification_report.txt` / `.json`: scikit-learn's per-class precision,
  recall, F1 and support, with their averages;
and the console lists the most confused pairs of classes.
"""
import contextlib
import csv
import json
import os
import warnings
from typing import Any, Sequence

import numpy as np

from cnnjax.runs import atomic

CURVES_FILE = 'curves.png'
CONFUSION_PNG = 'confusion_matrix.png'
CONFUSION_CSV = 'confusion_matrix.csv'
REPORT_TXT = 'classification_report.txt'
REPORT_JSON = 'classification_report.json'
# What `cnnjax.evaluate` writes: beside the run's reports, or in a folder per split.
EVALUATION_FILE = 'evaluation.json'
EVALUATIONS_DIR = 'evaluations'

# A confusion matrix has its counts written in the cells up to ANNOTATED_CLASSES classes and
# every class named up to NAMED_CLASSES; beyond, they would overlap at any size, and a figure
# grown to hold them (a text per cell, 0.65 inch a class) took minutes for 200 classes and for
# 1000 (ImageNet's) more memory than the machine had, after all the training. The figure stops
# growing at MAX_FIGURE_INCHES; the CSV keeps every count.
ANNOTATED_CLASSES, NAMED_CLASSES, MAX_FIGURE_INCHES = 30, 100, 22.0


def _writable_matplotlib_folder() -> None:
  """Where the home folder is read-only (a container, a shared account), matplotlib makes a
  fresh cache folder at each run, rebuilding its font cache, and warns twice in the console:
  a folder of this user's own in the temporary directory serves instead, and lasts."""
  if 'MPLCONFIGDIR' in os.environ:
    return
  config_home = os.environ.get('XDG_CONFIG_HOME') or os.path.expanduser('~/.config')
  default = os.path.join(config_home, 'matplotlib')
  try:
    os.makedirs(default, exist_ok=True)
    if os.access(default, os.W_OK):
      return
  except OSError:
    pass
  import tempfile
  user = os.getuid() if hasattr(os, 'getuid') else os.environ.get('USERNAME', '')
  folder = os.path.join(tempfile.gettempdir(), f'cnnjax-matplotlib-{user}')
  try:
    os.makedirs(folder, mode=0o700, exist_ok=True)
  except OSError:
    return  # matplotlib's own fallback, and its warning, then.
  if os.access(folder, os.W_OK):  # Not another user's folder of that name.
    os.environ['MPLCONFIGDIR'] = folder


def pyplot():
  """matplotlib's pyplot, drawing to files (no display needed)."""
  _writable_matplotlib_folder()
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  return plt


def save_figure(figure, path: str) -> None:
  """Lays `figure` out, writes it and frees it. A class name in a script the font lacks
  (an emoji, CJK) is drawn as a box: matplotlib's warning about each such glyph would only
  break into the console's lines."""
  try:
    with warnings.catch_warnings():
      warnings.filterwarnings('ignore', message='Glyph .* missing from font')
      figure.tight_layout()
      with atomic.replaced_whole(path, 'wb') as f:
        figure.savefig(f, format=os.path.splitext(path)[1][1:] or 'png', dpi=120)
  finally:
    pyplot().close(figure)


def style_epoch_axis(ax, ylabel: str) -> None:
  """Whole epochs on the x axis, a light grid, a legend."""
  from matplotlib.ticker import MaxNLocator
  ax.set_xlabel('epoch')
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts: row = true class, column = predicted class (scikit-learn's convention)."""
  from sklearn import metrics
  return metrics.confusion_matrix(labels, predictions, labels=list(range(num_classes)))


def worst_confusions(matrix: np.ndarray, class_names: Sequence[str], top: int = 5
                     ) -> list[dict[str, Any]]:
  """The `top` largest off-diagonal counts: which true class was taken for which."""
  off_diagonal = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
  order = np.argsort(off_diagonal, axis=None)[::-1][:top]
  pairs = []
  for true, predicted in zip(*np.unravel_index(order, matrix.shape)):
    count = int(off_diagonal[true, predicted])
    if count:
      pairs.append({'true': class_names[true], 'predicted': class_names[predicted],
                    'count': count, 'fraction_of_true': count / max(int(matrix[true].sum()), 1)})
  return pairs


def plot_curves(rows: Sequence[dict[str, Any]], path: str, title: str) -> None:
  """Loss and accuracy per epoch, training and (where there is one) validation."""
  plt = pyplot()
  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  epochs = [row['epoch'] for row in rows]
  for ax, metric in zip(axes, ('loss', 'accuracy')):
    for split, style in (('train', '-o'), ('val', '--s')):
      key = f'{split}_{metric}'
      if any(key in row for row in rows):
        ax.plot(epochs, [row.get(key, np.nan) for row in rows], style, markersize=3,
                label='training' if split == 'train' else 'validation')
    stage_starts = [r['epoch'] for p, r in zip(rows, rows[1:]) if p.get('stage') != r.get('stage')]
    for epoch in stage_starts:
      ax.axvline(epoch - 0.5, color='grey', linestyle=':', label='fine-tuning starts')
    style_epoch_axis(ax, metric)
  figure.suptitle(title)
  save_figure(figure, path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str,
                          title: str) -> None:
  """Darker for more, class names on both axes; the counts in the cells while they fit.
  With many classes every k-th class is named and the counts are left to the CSV."""
  plt = pyplot()
  num_classes = len(class_names)
  size = min(max(6.0, 0.65 * num_classes + 2), MAX_FIGURE_INCHES)
  figure, ax = plt.subplots(figsize=(size + 1, size))
  image = ax.imshow(matrix, cmap='Blues', interpolation='nearest')
  figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  step = -(-num_classes // NAMED_CLASSES)
  ticks = np.arange(0, num_classes, step)
  names = [class_names[i] for i in ticks]
  fontsize = min(10.0, max(4.0, 600 / num_classes)) if num_classes else 10.0
  ax.set_xticks(ticks, names, rotation=45, ha='right', fontsize=fontsize)
  ax.set_yticks(ticks, names, fontsize=fontsize)
  named = '' if step == 1 else f' (one in {step} named)'
  ax.set_xlabel(f'predicted class{named}')
  ax.set_ylabel(f'true class{named}')
  if num_classes <= ANNOTATED_CLASSES:
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
      for j in range(matrix.shape[1]):
        ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=8,
                color='white' if matrix[i, j] > threshold else 'black')
  counts = '' if num_classes <= ANNOTATED_CLASSES else f' (counts in {CONFUSION_CSV})'
  ax.set_title(f'{title}: {int(np.trace(matrix))} of {int(matrix.sum())} correct{counts}')
  save_figure(figure, path)


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          class_names: Sequence[str]) -> tuple[str, dict[str, Any]]:
  """scikit-learn's report as text and as a dict, of the classes the examples hold or the
  predictions name. A class of neither (a split without it, a slice of a few examples) has
  no precision or recall to report, and scikit-learn's 0 for each would halve the macro
  averages of a two-class split that was classified right."""
  from sklearn import metrics
  shown = sorted(set(np.unique(labels).tolist()) | set(np.unique(predictions).tolist()))
  kwargs = dict(labels=shown, target_names=[class_names[i] for i in shown], digits=4,
                zero_division=0)
  return (metrics.classification_report(labels, predictions, **kwargs),
          metrics.classification_report(labels, predictions, output_dict=True, **kwargs))


def write_report(workdir: str, labels: np.ndarray, predictions: np.ndarray,
                 class_names: Sequence[str], rows: Sequence[dict[str, Any]], title: str
                 ) -> list[dict[str, Any]]:
  """Writes every report file into `workdir`; returns the worst confusions. An evaluation's
  record (`EVALUATION_FILE`) there is removed: it describes the reports these replace (a
  run evaluated at step 4, then trained on, kept it beside its final reports)."""
  matrix = confusion_matrix(labels, predictions, len(class_names))
  with atomic.replaced_whole(os.path.join(workdir, CONFUSION_CSV), newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['true \\ predicted', *class_names])
    for name, counts in zip(class_names, matrix):
      writer.writerow([name, *counts.tolist()])
  plot_confusion_matrix(matrix, class_names, os.path.join(workdir, CONFUSION_PNG), title)
  text, as_dict = classification_report(labels, predictions, class_names)
  with atomic.replaced_whole(os.path.join(workdir, REPORT_TXT)) as f:
    f.write(text)
  with atomic.replaced_whole(os.path.join(workdir, REPORT_JSON)) as f:
    json.dump(as_dict, f, indent=2)
  if rows:
    plot_curves(rows, os.path.join(workdir, CURVES_FILE), title)
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(workdir, EVALUATION_FILE))
  return worst_confusions(matrix, class_names)


def format_confusions(pairs: Sequence[dict[str, Any]]) -> str:
  lines = ['Most confused (true -> predicted):']
  lines += [f"  {p['true']} -> {p['predicted']}: {p['count']} ({100 * p['fraction_of_true']:.1f}% "
            f"of {p['true']})" for p in pairs]
  return '\n'.join(lines) if pairs else 'No confusions: every test example was classified right.'
