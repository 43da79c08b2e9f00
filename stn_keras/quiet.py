"""Keep third-party warnings and logs out of stn-keras's command line and examples."""

import contextlib
import logging
import os
import sys
import warnings


@contextlib.contextmanager
def quiet_third_party(verbose):
    """Keep TensorFlow's, Keras's and tf2onnx's warnings and logs out of the output.

    Python warnings are ignored and those libraries' loggers set to errors only; what their C++ code
    writes to the standard error (file descriptor 2) is discarded, so that an error stays the one line
    the command line promises. With `verbose`, nothing is changed.

    Yields:
        Nothing.
    """
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl", "tf2onnx", "keras")]
    levels = [logger.level for logger in loggers]
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
