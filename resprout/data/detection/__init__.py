"""Detection data: :class:`DetectionDataset` (images of any size with boxes, labels and class names), the Pascal VOC
and COCO JSON readers and writers, and the Fashion-MNIST canvas set, a detection set made of real images.

* :mod:`.dataset`: the data model and its coordinate conventions;
* :mod:`.voc`: :func:`read_voc`, :func:`write_voc`; :mod:`.coco`: :func:`read_coco`, :func:`write_coco`;
* :mod:`.canvas`: :func:`make_canvases`, :func:`write_fashion_canvas_voc` (docs/vision.md says why it is an analog).
"""

from resprout.data.detection.coco import read_coco, write_coco
from resprout.data.detection.dataset import DetectionDataset
from resprout.data.detection.voc import VOC_CLASSES, read_voc, write_voc

__all__ = ["VOC_CLASSES", "DetectionDataset", "read_coco", "read_voc", "write_coco", "write_voc"]
