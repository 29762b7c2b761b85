"""Photos on disk to arrays: scanning a class folder (dataset), reading images, tf.data input, the
view cache of extracted features, near-duplicates, calibration images, corruptions. Imports the core only."""
