"""Fill a TF-Hub cache with the MobileNetV2 1.0 @224 feature vector Model Maker asks for, offline.

MediaPipe Model Maker's default image classifier (``SupportedModels.MOBILENET_V2``) loads
``https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4`` through ``hub.KerasLayer``.
TF Hub first looks in its cache (``$TFHUB_CACHE_DIR``, else ``<tmp>/tfhub_modules``) for the folder
``sha1(handle)``; when it is there and not empty, it loads it and downloads nothing: that is how every
run after a user's first one goes. This machine cannot download it, so this script writes that
folder: a TF2 SavedModel with the module's interface (float images in [0, 1], 224 x 224 x 3 → a
1280-wide feature vector after global average pooling), whose weights are keras.applications'
MobileNetV2 1.0 loaded from a no-top .h5 (the bench passes the torchvision checkpoint that
``edgetl weights import-torchvision`` converts: the same checkpoint every side of the race loads).

Runs in Model Maker's environment (its TensorFlow writes the SavedModel):

    venv-mm/bin/python bench/peers/mm_backbone.py WEIGHTS_NO_TOP_H5 HUB_CACHE_DIR

then ``TFHUB_CACHE_DIR=HUB_CACHE_DIR`` (``model_maker.py --hub-cache HUB_CACHE_DIR``)."""
import hashlib
import os
import shutil
import sys

HANDLE = "https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4"


def module_dir(cache: str, handle: str = HANDLE) -> str:
    """The folder TF Hub's resolvers look in for ``handle`` (tensorflow_hub.compressed_module_resolver)."""
    return os.path.join(cache, hashlib.sha1(handle.encode("utf8")).hexdigest())


def main() -> int:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    h5, cache = sys.argv[1], sys.argv[2]
    if not os.path.isfile(h5):
        sys.exit(f"{h5}: no such weight file (make it with: edgetl weights import-torchvision --out DIR)")
    import tensorflow as tf

    inp = tf.keras.Input((224, 224, 3))
    x = tf.keras.layers.Rescaling(2.0, offset=-1.0)(inp)  # the module's [0, 1] input → MobileNetV2's [-1, 1]
    base = tf.keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None,
                                             input_shape=(224, 224, 3), pooling="avg")
    base.load_weights(h5)
    model = tf.keras.Model(inp, base(x))
    dest = module_dir(cache)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tf.saved_model.save(model, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    with open(dest + ".descriptor.txt", "w") as f:
        f.write(f"Module: {HANDLE}\nWritten offline by bench/peers/mm_backbone.py from {os.path.abspath(h5)}\n")
    print(f"wrote {dest} ({HANDLE})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
