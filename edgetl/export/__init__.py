"""A trained Keras model to files for a device: the exporter (the ladder of attempts per format and
quantization), the converters, quantization-aware training, the device bundle."""
