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
from dataclasses import dataclass, field
from typing import Any

import keras

from pipeline.errors import PipelineError
from pipeline.training.process_group import Group, join

#: Mixed precision (``precision: mixed``): float16 on TensorFlow, bfloat16 on JAX / torch
#: (measured on an H100 with JAX: B7 107 vs 96 img/s in float32; no loss scaling needed).
GPU_POLICY = {"tensorflow": "mixed_float16", "jax": "mixed_bfloat16", "torch": "mixed_bfloat16"}


#: The ``precision`` parameter of a training stage -> whether Keras' mixed policy is used.
PRECISIONS = ("float32", "mixed")


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
    replicas: int = 1  # devices each global batch is split across (of all processes)
    group: Group | None = None  # the training group of several processes, if any

    @property
    def chief(self) -> bool:
        """Whether this process writes the outputs and logs the run (the only one, or rank 0)."""
        return self.group is None or self.group.chief

    @property
    def shard(self) -> tuple[int, int]:
        """(this process's rank, process count): which part of every global batch it feeds."""
        return (self.group.rank, self.group.count) if self.group else (0, 1)

    @contextlib.contextmanager
    def local(self):
        """Outside the data-parallel distribution, for a model on this process alone (a group's
        validation and saving use a local copy of the weights: each process can read the
        replicated weights, but a distributed model saved by one process alone deadlocks)."""
        distribution = keras.distribution.distribution() if self.backend == "jax" else None
        if distribution is not None:
            keras.distribution.set_distribution(None)
        try:
            yield
        finally:
            if distribution is not None:
                keras.distribution.set_distribution(distribution)

    def local_copy(self, model: keras.Model) -> keras.Model:
        """A copy of ``model`` on this process alone, with its current weights."""
        with self.local():
            copy = keras.models.clone_model(model)
            copy.set_weights(model.get_weights())
        return copy

    @property
    def label(self) -> str:
        """``cpu`` or ``gpu:<name>`` (`` x N`` for several; ``, K processes`` for a group), for tags and logs."""
        count = f" x {self.replicas}" if self.replicas > 1 else ""
        processes = f", {self.group.count} processes" if self.group else ""
        return (f"gpu:{self.accelerators[0]}" if self.accelerators else "cpu") + count + processes

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


def configure(seed: int, precision: str = "float32", group: Group | None = None) -> Devices:
    """Seed everything once; use all of this machine's devices (a deterministic CPU where there
    are none), in the stage's ``precision`` (``float32``, or ``mixed``: :data:`GPU_POLICY`).
    In a training ``group`` (JAX only) join it first: the devices are then all processes'.

    What a backend cannot do is said in ``Devices.notes`` (printed by the training stage)
    rather than silently skipped.
    """
    if precision not in PRECISIONS:
        raise PipelineError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    backend = name()
    if group is not None:
        if backend != "jax":
            raise PipelineError(
                f"training as a group of processes runs on the JAX backend (KERAS_BACKEND=jax), not {backend}"
            )
        join(group)  # before anything touches a JAX device
    keras.utils.set_random_seed(seed)
    found = accelerators()
    policy = GPU_POLICY.get(backend, "float32") if precision == "mixed" else "float32"
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
            devices.notes.append(
                f"tensorflow: data-parallel over {devices.replicas} devices (tf.distribute.MirroredStrategy)"
            )
    elif backend == "jax":
        import jax

        # The default platform's devices (the GPUs on a GPU machine, else the CPU(s)), of every
        # process of the group.
        every = jax.devices()
        if len(every) > 1:
            distribution = keras.distribution.DataParallel(devices=every)
            # A group's processes each feed their own part of every global batch (ArrayBatches'
            # shard), which Keras then assembles; its auto-sharding is for tf.data only.
            distribution.auto_shard_dataset = group is None
            keras.distribution.set_distribution(distribution)
            devices.replicas = len(every)
            where = f", {group.count} processes; this is {group.describe()}" if group else ""
            devices.notes.append(
                f"jax: data-parallel over {len(every)} devices{where} (keras.distribution.DataParallel)"
            )
    elif backend == "torch":
        devices.notes.append("torch: no op-determinism switch is set; reruns may differ in the last digits")
        if len(found) > 1:
            devices.notes.append(f"torch: {len(found)} GPUs found, training uses the first only")
    devices.group = group
    return devices
