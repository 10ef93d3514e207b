"""HAM10000 skin-lesion classification pipeline.

All logic of the DVC stages lives in this package; the scripts in ``stages/`` only parse
arguments, load their params section and call into it. Importing the package has no side
effects (no TensorFlow import, no MLflow connection, no file access).
"""

__version__ = "0.1.0"
