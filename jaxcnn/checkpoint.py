"""Checkpoints with orbax: atomic, the last k kept, refused when corrupt or from another model.

A checkpoint holds the :class:`~jaxcnn.train.TrainState` (parameters, batch statistics, optimizer
state, step, key) and a JSON record of the run (the model's fingerprint, the epoch, the metric
history, early-stopping counters). Orbax writes each checkpoint into a temporary folder and renames
it when complete, so a run killed mid-write leaves the previous checkpoints intact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcnn.errors import CheckpointError
from jaxcnn.model import Sequential

__all__ = ["Checkpoints", "model_fingerprint"]


def model_fingerprint(model: Sequential) -> str:
    """The sha256 of the model's TOML (name, input shape, layers and their arguments)."""
    return hashlib.sha256(model.to_toml().encode()).hexdigest()


def _on_devices(abstract_state: Any) -> Any:
    """Leaves without a sharding restore onto this process's first device: a checkpoint written on
    another layout (8 devices, 2 processes) then restores here too. Leaves with one keep it."""
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda leaf: leaf if getattr(leaf, "sharding", None) is not None
                        else jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=default), abstract_state)


class Checkpoints:
    """The checkpoints of one run in ``directory``: ``save(step, state, record)``, ``restore``.

    Args:
      directory: where the numbered checkpoints go (created if missing).
      fingerprint: :func:`model_fingerprint` of the run's model; a checkpoint with another one is
        refused.
      keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fingerprint: str, keep: int = 3) -> None:
        self.directory = pathlib.Path(directory).absolute()
        self.fingerprint = fingerprint
        logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Write the checkpoint of ``step`` (replacing one of the same step)."""
        record = {**record, "fingerprint": self.fingerprint, "step": int(step)}
        if int(step) in self._manager.all_steps():  # e.g. best/ after a resumed run reaches it again
            self._manager.delete(int(step))
        self._manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]] | None:
        """The state and record of ``step`` (default: the newest), or ``None`` when there is none.
        The state is laid out as ``abstract_state``'s leaves say (``ShapeDtypeStruct.sharding``, such
        as :meth:`jaxcnn.parallel.Layout.with_shardings` gives), else on one device, whatever layout
        the checkpoint was written from.

        Raises:
          CheckpointError: the checkpoint is corrupt or truncated, or was written for another model.
        """
        return self._restore(ocp.args.StandardRestore(_on_devices(abstract_state)), step)

    def restore_variables(self, abstract_variables: dict[str, Any], step: int | None = None
                          ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Only ``{"params": ..., "batch_stats": ...}`` of the state (for serving: the optimizer
        state is not read), and the record; as :meth:`restore` otherwise."""
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(dtype=leaf.dtype, sharding=sharding),
                                    abstract_variables)
        return self._restore(ocp.args.PyTreeRestore(item=abstract_variables, restore_args=restore_args,
                                                    partial_restore=True), step)

    def _restore(self, state_args: Any, step: int | None) -> tuple[Any, dict[str, Any]] | None:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        where = self.directory / str(step)
        try:
            record = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore())).record
        except Exception as error:  # orbax and tensorstore raise many types for a damaged folder
            raise CheckpointError(
                f"cannot read the checkpoint's record ({type(error).__name__}: {error}); it is corrupt or "
                "truncated. Move it away to resume from an older one, or use another workdir",
                source=str(where)) from error
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                "was written for a different model (its fingerprint does not match this config's layers); "
                "use another workdir, or the config it was trained with", source=str(where))
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(state=state_args)).state
        except Exception as error:
            raise CheckpointError(
                f"cannot restore the training state ({type(error).__name__}: {error}); the checkpoint is "
                "corrupt or truncated", source=str(where)) from error
        return state, record

    def close(self) -> None:
        self._manager.close()
