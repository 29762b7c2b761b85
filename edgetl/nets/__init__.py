"""The Keras models: heads and layers, building and loading a model, ImageNet weights and their
import from torchvision checkpoints, EfficientNet-Lite. Imports the core only."""
