"""Faster R-CNN with a plain, ACT or SACT ResNet feature extractor (paper 4.2).

Boxes are `[ymin, xmin, ymax, xmax]` throughout: in pixels inside the model,
normalised to [0, 1] at its interface and in the data.

  box_ops, box_coder   IoU, clipping, flips; Faster R-CNN box codes
  anchors              the first stage's anchor grid (stride 16)
  matching, sampling   anchor / proposal matching; balanced sampling
  targets, losses      both stages' training targets and losses
  nms, roi             the two NMS steps; crop_and_resize ROI features
  model                `FasterRCNN`, feature extractor FLOPs
  config               `ModelConfig` (the paper's defaults), `DetectionConfig`
  data                 TFDS coco/2017 and clutter_digits_detection pipelines
  clutter_detection    the offline demo dataset's TFDS builder
  coco_eval            COCO category ids, pycocotools evaluation
  training, evaluation the training loop; AP + FLOPs evaluation (Table 1)
  export               serving SavedModel
"""
