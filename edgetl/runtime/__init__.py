"""Running a model file: one runner per runtime (Keras, LiteRT, ONNX Runtime, MediaPipe), scoring it on a
split, timing it, reading and writing TFLite metadata. Imports the core and nets."""
