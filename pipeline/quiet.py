"""TensorFlow's start-up notices, kept out of the stage logs.

Importing TensorFlow prints, twice per process and whatever ``TF_CPP_MIN_LOG_LEVEL`` says (its
C++ logging starts before it reads the variable), ``WARNING: All log messages before
absl::InitializeLog() ...`` and ``I0000 ... port.cc:...] oneDNN custom operations are on ...``;
and Keras' predict on several models of different input sizes makes TensorFlow warn about
retracing. None of it is actionable, and it was a fifth of the demo run's log.

A stage script imports this module first: it imports Keras (and so TensorFlow) with the
process's standard error captured at the file-descriptor level, then writes back every captured
line except those notices, and keeps the retracing warning out of TensorFlow's Python logger.
Nothing else is filtered, and a failing import still shows its error.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile

#: The lines dropped from what importing TensorFlow writes to standard error.
NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I0000 \S+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\..*)$"
)


class _NoRetracing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def import_keras_quietly() -> None:
    """Import Keras with standard error captured, and write back all but :data:`NOISE`."""
    if "keras" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.get_logger().addFilter(_NoRetracing())
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture:
                if not NOISE.match(line.rstrip(b"\r\n")):
                    os.write(2, line)


import_keras_quietly()
