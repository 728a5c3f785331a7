"""Exports of a segment job's OUTPUT to the formats training and labelling tools read (no Ray needed).

- :mod:`~diffseg.export.coco`: COCO instances JSON (RLE segmentation, bbox, area, score per class);
- :mod:`~diffseg.export.voc`: a VOC-style folder of palette PNG label maps plus the class list;
- :mod:`~diffseg.export.hf`: a Hugging Face dataset folder (Parquet shards with ``Image()`` features);
- :mod:`~diffseg.export.labelstudio`: Label Studio tasks with brush-RLE predictions.

Every exporter reads only committed units (:mod:`diffseg.lake.read`) of one run and one method
(:mod:`~diffseg.export.source`), and names files by :func:`~diffseg.export.source.unique_stems`, so two
images with the same file stem never overwrite each other. ``python -m jobs.export`` is the command.
"""
