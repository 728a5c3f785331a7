"""Image and mask codecs: decoding inputs, label-map/score encodings, RLE, statistics, overlays."""
