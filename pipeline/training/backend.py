"""The Keras backend in use and what training needs from it on this machine's devices.

Keras 3 picks its backend from ``KERAS_BACKEND`` (``tensorflow`` by default, ``jax``, ``torch``)
at its first import. The model builders are backend-neutral; what differs per backend is
how devices are found, how determinism is switched on and how several devices are used:

========== =============================== ======================== ===========================
backend    accelerators                    determinism on CPU        several devices
========== =============================== ======================== ===========================
tensorflow ``tf.config`` GPUs               ``enable_op_determinism`` ``MirroredStrategy``
jax        ``jax.devices()`` not ``cpu``    XLA on CPU is             ``keras.distribution
                                            deterministic             .DataParallel``
torch      ``torch.cuda``                   not switched (said so)    not supported (said so)
========== =============================== ======================== ===========================

Several devices means data parallelism over every device the backend sees: each step's global
batch (``batch_size``, unchanged) is split evenly across them and the gradients are summed, so
a run on N devices takes the same steps as on one and only the wall clock changes. No learning
rate is rescaled (the global batch is the same). A CPU is one device unless several are made
on purpose, which is how this is tested without GPUs: ``XLA_FLAGS=
--xla_force_host_platform_device_count=2`` gives JAX two CPU devices, and two logical CPU
devices (``tf.config.set_logical_device_configuration``) give TensorFlow's strategy two replicas.

Nothing here imports TensorFlow unless it is the backend.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import keras

from pipeline.errors import PipelineError

#: Mixed precision used on GPUs: float16 on TensorFlow (as before), bfloat16 on JAX / torch
#: (measured on an H100 with JAX: B7 107 vs 96 img/s in float32; no loss scaling needed).
GPU_POLICY = {"tensorflow": "mixed_float16", "jax": "mixed_bfloat16", "torch": "mixed_bfloat16"}


PRECISION_ENV = "PIPELINE_PRECISION"
PRECISIONS = ("auto", "float32", "mixed")


def precision_choice() -> str:
    """``$PIPELINE_PRECISION``: ``auto`` (mixed on GPUs, float32 on CPUs), ``float32`` or ``mixed``."""
    value = os.environ.get(PRECISION_ENV, "").strip() or "auto"
    if value not in PRECISIONS:
        raise PipelineError(f"{PRECISION_ENV}={value!r}: expected one of {', '.join(PRECISIONS)}")
    return value


def name() -> str:
    """The active Keras backend: ``tensorflow``, ``jax``, ``torch`` or ``numpy``."""
    return keras.backend.backend()


def accelerators() -> list[str]:
    """Names of the GPUs (or other accelerators) the active backend can use."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return [
            tf.config.experimental.get_device_details(device).get("device_name", device.name)
            for device in tf.config.list_physical_devices("GPU")
        ]
    if backend == "jax":
        import jax

        return [getattr(device, "device_kind", str(device)) for device in jax.devices() if device.platform != "cpu"]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return []


@dataclass
class Devices:
    """How training runs here: the backend, its devices, and the scope models are built in."""

    backend: str
    accelerators: list[str]
    policy: str
    notes: list[str] = field(default_factory=list)
    strategy: Any = None  # a tf.distribute.Strategy on TensorFlow, else None
    replicas: int = 1  # devices each global batch is split across

    @property
    def label(self) -> str:
        """``cpu`` or ``gpu:<name>`` (`` x N`` for several), for tags and logs."""
        count = f" x {self.replicas}" if self.replicas > 1 else ""
        return f"gpu:{self.accelerators[0]}{count}" if self.accelerators else f"cpu{count}"

    def scope(self) -> contextlib.AbstractContextManager:
        """The context models and optimizers are created in (a TF strategy's scope, or none)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def adapt(self, model: keras.Model) -> keras.Model:
        """Make ``model`` train on these devices as it would on one.

        BatchNorm normalises by the statistics of the batch it sees. JAX's data parallelism
        compiles the step for the global batch, so its statistics are the global batch's
        already; TensorFlow's strategy runs each replica on its share, so there every
        BatchNorm layer is switched to ``synchronized`` (the replicas' moments are all-reduced)
        or N devices would train a different model than one. (``save_for_inference`` switches
        it off again: the flag is TensorFlow-only and a saved model must load on any backend.)
        """
        if self.backend == "tensorflow" and self.replicas > 1:
            for layer in model._flatten_layers(include_self=False, recursive=True):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = True
        return model


def configure(seed: int) -> Devices:
    """Seed everything once; on GPUs use mixed precision and all of them, else a deterministic CPU.

    ``$PIPELINE_PRECISION`` overrides the precision (``float32`` / ``mixed``; the default
    ``auto`` is mixed on GPUs only).

    What a backend cannot do is said in ``Devices.notes`` (printed by the training stage)
    rather than silently skipped.
    """
    choice = precision_choice()
    keras.utils.set_random_seed(seed)
    backend = name()
    found = accelerators()
    mixed = choice == "mixed" or (choice == "auto" and bool(found))
    policy = GPU_POLICY.get(backend, "float32") if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    devices = Devices(backend, found, policy)
    if backend == "tensorflow":
        import tensorflow as tf

        logical_cpus = [device.name for device in tf.config.list_logical_devices("CPU")]
        if found:
            devices.strategy = tf.distribute.MirroredStrategy()
        elif len(logical_cpus) > 1:
            tf.config.experimental.enable_op_determinism()
            devices.strategy = tf.distribute.MirroredStrategy(devices=logical_cpus)
        else:
            tf.config.experimental.enable_op_determinism()
            devices.strategy = tf.distribute.get_strategy()
        devices.replicas = devices.strategy.num_replicas_in_sync
        if devices.replicas > 1:
            devices.notes.append(f"tensorflow: data-parallel over {devices.replicas} devices (tf.distribute.MirroredStrategy)")
    elif backend == "jax":
        import jax

        every = jax.devices()  # the default platform's: the GPUs on a GPU machine, else the CPU(s)
        if len(every) > 1:
            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=every))
            devices.replicas = len(every)
            devices.notes.append(f"jax: data-parallel over {len(every)} devices (keras.distribution.DataParallel)")
    elif backend == "torch":
        devices.notes.append("torch: no op-determinism switch is set; reruns may differ in the last digits")
        if len(found) > 1:
            devices.notes.append(f"torch: {len(found)} GPUs found, training uses the first only")
    return devices
