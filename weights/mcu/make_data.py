"""Writes the 16x16 MNIST training set of the MCU model as a PNG folder the trainer reads.

MNIST test-split images 0..8999 of data/mnist (9000..9999 stay held out), each 28x28 digit
averaged over 2x2 blocks (14x14) and centred on a 16x16 black canvas (1 pixel each side),
written as OUT/<label>/<index>.png (one subfolder per class: the trainer's class labels).

    /work/venv/bin/python weights/mcu/make_data.py data/mnist runs/mnist16
"""
import gzip
import os
import sys

import numpy as np
from PIL import Image

src, out = sys.argv[1], sys.argv[2]
with gzip.open(os.path.join(src, "t10k-images-idx3-ubyte.gz")) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
with gzip.open(os.path.join(src, "t10k-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
for d in range(10):
    os.makedirs(os.path.join(out, str(d)), exist_ok=True)
for i in range(9000):
    small = images[i].astype(np.float64).reshape(14, 2, 14, 2).mean(axis=(1, 3))
    canvas = np.zeros((16, 16), np.uint8)
    canvas[1:15, 1:15] = np.round(small).astype(np.uint8)
    Image.fromarray(canvas, mode="L").save(os.path.join(out, str(labels[i]), f"{i:05d}.png"))
print(f"wrote 9000 images to {out}")
