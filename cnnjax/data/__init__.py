"""The data path: datasets from TFDS or local files, split syntax, images, batches."""
