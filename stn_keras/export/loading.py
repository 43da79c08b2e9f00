"""Load a `.keras` model file for export, turning every way it can fail into a one-line error."""

import importlib
import os
import re
import zipfile


def check_model_file(path):
    """Check that `path` looks like a Keras 3 model file, without importing TensorFlow.

    Args:
        path: path to a `.keras` file.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if `path` is a directory, not a `.keras` file, or not a valid `.keras` archive.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Model file {path!r} does not exist.")
    if os.path.isdir(path) or not path.endswith(".keras"):
        raise ValueError(
            f"{path!r} is not a Keras model file: expected a `.keras` file written by `model.save()`."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(
            f"{path!r} is not a valid `.keras` archive (corrupt or truncated): {e}"
        ) from None
    if broken is not None or "config.json" not in names:
        raise ValueError(
            f"{path!r} is not a valid `.keras` archive (corrupt or missing config.json)."
        )


def import_modules(modules):
    """Import the modules that define (and register) a model's custom objects.

    Args:
        modules: iterable of dotted module names.

    Raises:
        ValueError: naming a module that cannot be imported.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"Cannot import module {module!r}: {e}") from None


def _one_line(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def load_model(path, custom_modules=()):
    """Load the Keras model in `path` for export.

    `stn_keras` is imported first, so its layers are known; other custom layers must be registered
    (`keras.saving.register_keras_serializable`) by one of `custom_modules`.

    Args:
        path: path to a `.keras` file.
        custom_modules: dotted names of modules to import first. Defaults to `()`.

    Returns:
        The loaded `keras.Model`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if `path` is not a valid `.keras` file, a module cannot be imported, or the model
            uses a custom object that is not registered, with a one-line message.
    """
    check_model_file(path)
    import_modules(["stn_keras", *custom_modules])
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except (
        Exception
    ) as e:  # Keras raises TypeError, ValueError, KeyError, OSError... for bad files.
        unknown = re.search(r"Could not locate (?:class|function) '([^']+)'", str(e))
        if unknown:
            raise ValueError(
                f"{os.fspath(path)!r} uses an unknown custom object {unknown.group(1)!r}: import the "
                "module that defines and registers it (--custom-module MODULE)."
            ) from None
        raise ValueError(f"Cannot load model {os.fspath(path)!r}: {_one_line(e)}") from None
