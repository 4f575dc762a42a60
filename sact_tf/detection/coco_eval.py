"""COCO box evaluation with pycocotools, from in-memory annotations.

TFDS `coco/2017` numbers the 80 object classes 0..79 in the order of COCO's
category ids, which skip 10 values (1..90): `COCO_CATEGORIES` maps them back,
so that the results use COCO's ids. The ground truth is collected from the
evaluation examples themselves (no annotation file needed), which also
serves datasets that have none.
"""

import contextlib
import io

import numpy as np

# (COCO category id, name) of TFDS coco/2017 labels 0..79, in order.
COCO_CATEGORIES = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'),
    (5, 'airplane'), (6, 'bus'), (7, 'train'), (8, 'truck'), (9, 'boat'),
    (10, 'traffic light'), (11, 'fire hydrant'), (13, 'stop sign'),
    (14, 'parking meter'), (15, 'bench'), (16, 'bird'), (17, 'cat'),
    (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'), (22, 'elephant'),
    (23, 'bear'), (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'),
    (28, 'umbrella'), (31, 'handbag'), (32, 'tie'), (33, 'suitcase'),
    (34, 'frisbee'), (35, 'skis'), (36, 'snowboard'), (37, 'sports ball'),
    (38, 'kite'), (39, 'baseball bat'), (40, 'baseball glove'),
    (41, 'skateboard'), (42, 'surfboard'), (43, 'tennis racket'),
    (44, 'bottle'), (46, 'wine glass'), (47, 'cup'), (48, 'fork'),
    (49, 'knife'), (50, 'spoon'), (51, 'bowl'), (52, 'banana'), (53, 'apple'),
    (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'), (57, 'carrot'),
    (58, 'hot dog'), (59, 'pizza'), (60, 'donut'), (61, 'cake'),
    (62, 'chair'), (63, 'couch'), (64, 'potted plant'), (65, 'bed'),
    (67, 'dining table'), (70, 'toilet'), (72, 'tv'), (73, 'laptop'),
    (74, 'mouse'), (75, 'remote'), (76, 'keyboard'), (77, 'cell phone'),
    (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'),
    (82, 'refrigerator'), (84, 'book'), (85, 'clock'), (86, 'vase'),
    (87, 'scissors'), (88, 'teddy bear'), (89, 'hair drier'),
    (90, 'toothbrush'),
)

# COCOeval.stats[0:6], the paper's (and Table 1's) box metrics.
METRICS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large')


def _xywh(boxes, height, width):
  """Normalised `[N, 4]` `[ymin, xmin, ymax, xmax]` -> pixel `[x, y, w, h]`."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  height, width = float(height), float(width)
  ymin, xmin = boxes[:, 0] * height, boxes[:, 1] * width
  ymax, xmax = boxes[:, 2] * height, boxes[:, 3] * width
  return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)


class CocoEvaluator:
  """Collects ground truth and detections image by image, then runs COCOeval.

  Args:
    categories: ((COCO category id, name), ...) of the contiguous classes
      0, 1, ..., e.g. `COCO_CATEGORIES`.
  """

  def __init__(self, categories):
    self.categories = tuple(categories)
    self._images = []
    self._annotations = []
    self._detections = []
    self._ids = set()

  @property
  def num_images(self):
    return len(self._images)

  def category_id(self, label):
    """COCO category id of contiguous class `label` (0-based)."""
    label = int(label)
    if not 0 <= label < len(self.categories):
      raise ValueError(f'Class {label} is outside the dataset\'s '
                       f'{len(self.categories)} classes.')
    return self.categories[label][0]

  def add_image(self, image_id, height, width, gt_boxes, gt_classes,
                gt_is_crowd, gt_area, boxes, scores, classes):
    """Adds one image.

    Args:
      image_id: the image's unique id.
      height, width: its original size in pixels.
      gt_boxes: `[M, 4]` normalised ground-truth boxes; gt_classes: `[M]`
        0-based; gt_is_crowd: bool `[M]`; gt_area: `[M]` object areas in
        pixels (COCO's segment areas; they decide small / medium / large).
      boxes: `[D, 4]` normalised detections; scores: `[D]`; classes: `[D]`
        0-based.
    """
    image_id, height, width = int(image_id), int(height), int(width)
    if image_id in self._ids:
      raise ValueError(f'Image id {image_id} was added twice: the evaluation '
                       'split needs unique image/id values.')
    self._ids.add(image_id)
    self._images.append({'id': image_id, 'height': height, 'width': width})
    for box, label, crowd, area in zip(
        _xywh(gt_boxes, height, width), np.reshape(gt_classes, [-1]),
        np.reshape(gt_is_crowd, [-1]), np.reshape(gt_area, [-1])):
      self._annotations.append({
          'id': len(self._annotations) + 1, 'image_id': image_id,
          'category_id': self.category_id(label), 'bbox': box.tolist(),
          'area': float(area), 'iscrowd': int(bool(crowd))})
    for box, score, label in zip(_xywh(boxes, height, width),
                                 np.reshape(scores, [-1]),
                                 np.reshape(classes, [-1])):
      self._detections.append({
          'image_id': image_id, 'category_id': self.category_id(label),
          'bbox': box.tolist(), 'score': float(score)})

  def detections(self):
    """The detections in COCO's results format (a list of dicts)."""
    return list(self._detections)

  def evaluate(self):
    """Runs COCOeval (bbox).

    Returns:
      (metrics, report): metrics maps `METRICS` names to floats in [0, 1]
      (NaN where COCOeval has no ground truth, e.g. no large objects);
      report is COCOeval's printed summary.
    """
    if not self._images:
      raise ValueError('No images to evaluate.')
    # pylint: disable=import-outside-toplevel
    from pycocotools import coco
    from pycocotools import cocoeval
    ground_truth = coco.COCO()
    ground_truth.dataset = {
        'images': list(self._images),
        'annotations': list(self._annotations),
        'categories': [{'id': i, 'name': n} for i, n in self.categories],
    }
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
      ground_truth.createIndex()
      if self._detections:
        results = ground_truth.loadRes(self.detections())
      else:
        # loadRes cannot take an empty list.
        results = coco.COCO()
        results.dataset = dict(ground_truth.dataset, annotations=[])
        results.createIndex()
      evaluator = cocoeval.COCOeval(ground_truth, results, 'bbox')
      evaluator.evaluate()
      evaluator.accumulate()
      evaluator.summarize()
    stats = [float(s) if s >= 0 else float('nan')
             for s in evaluator.stats[:len(METRICS)]]
    return dict(zip(METRICS, stats)), report.getvalue()
