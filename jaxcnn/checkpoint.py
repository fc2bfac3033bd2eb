"""Checkpoints with orbax: atomic, the last k kept, refused when corrupt or from another run.

A checkpoint holds the :class:`~jaxcnn.train.TrainState` (parameters, batch statistics, optimizer
state, step, key) and a JSON record of the run: the model's fingerprint, the settings the run's
results depend on (``settings``: the ``[data]`` table, the ``[train]`` table but for ``epochs`` and
the checkpointing keys, the seed), the epoch, the metric history, early-stopping counters. A
checkpoint whose fingerprint or settings differ from the restoring run's is refused, naming what
differs, and left untouched.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a run killed
mid-write leaves the previous checkpoints intact. A checkpoint of a step that already exists (a
resumed run reaching that step again) is replaced without a moment in which neither is on disk:
the old one is first renamed aside (``.replaced-<step>``, which orbax does not list), the new one
written, then the old one deleted; a run killed in between finds the old one renamed back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxcnn.errors import CheckpointError
from jaxcnn.graph import Model

__all__ = ["Checkpoints", "model_fingerprint", "settings_differences"]

_ASIDE = ".replaced-"  # prefix of a checkpoint folder renamed aside while its step is rewritten


def model_fingerprint(model: Model) -> str:
    """The sha256 of the model's TOML (name, input shape, layers and their arguments)."""
    return hashlib.sha256(model.to_toml().encode()).hexdigest()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key (=A in the checkpoint, B now)`` for every dotted key whose value differs (a key missing
    on one side shows as ``unset``), sorted by key."""
    a, b = _flatten(saved), _flatten(current)
    show = lambda d, k: repr(d[k]) if k in d else "unset"  # noqa: E731
    # JSON turns tuples into lists: compare through the same JSON-shaped form.
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return [f"{k} (={show(a, k)} in the checkpoint, {show(b, k)} now)"
            for k in sorted(set(a) | set(b)) if k not in a or k not in b or norm(a[k]) != norm(b[k])]


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
      settings: what the run's results depend on besides the model (see the module docstring); a
        checkpoint recorded with other settings is refused, naming the keys. ``None`` (serving,
        export) does not compare them.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fingerprint: str, keep: int = 3,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.directory = pathlib.Path(directory).absolute()
        self.fingerprint = fingerprint
        self.settings = None if settings is None else dict(settings)
        logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
        self._recover_replaced()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def _recover_replaced(self) -> None:
        """Finish a replacement that a kill interrupted: the old checkpoint is renamed back where
        the new one was not completed, and deleted where it was."""
        if not self.directory.is_dir():
            return
        for aside in self.directory.glob(f"{_ASIDE}*"):
            step = self.directory / aside.name[len(_ASIDE):]
            if step.exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.replace(aside, step)

    def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
        """Write the checkpoint of ``step``, replacing one of the same step (a resumed run can reach
        a step again) such that one of the two is always on disk."""
        step = int(step)
        record = {**record, "fingerprint": self.fingerprint, "settings": self.settings, "step": step}
        aside = None
        if step in self._manager.all_steps():
            aside = self.directory / f"{_ASIDE}{step}"
            os.replace(self.directory / str(step), aside)
            self._manager.reload()  # orbax's cached step list must forget it
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)
        self._manager.wait_until_finished()
        if aside is not None:
            shutil.rmtree(aside)

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
            raise self._damaged(step, "its record cannot be read", error) from None
        if not isinstance(record, dict) or record.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                "was written for a different model (its fingerprint does not match this config's layers); "
                "use another workdir, or the config it was trained with", source=str(where))
        if self.settings is not None:
            if not isinstance(record.get("settings"), dict):
                raise CheckpointError(
                    "records no settings of its run (an older jaxcnn wrote it), so a resume cannot be "
                    "checked against this run's; use another workdir", source=str(where))
            differences = settings_differences(record["settings"], self.settings)
            if differences:
                raise CheckpointError(
                    f"was written by a run with other settings: {'; '.join(differences)}. Resume with "
                    "the settings it was written with, or use another workdir", source=str(where))
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(state=state_args)).state
        except Exception as error:
            raise self._damaged(step, "its training state cannot be restored", error) from None
        return state, record

    def _damaged(self, step: int, what: str, error: Exception) -> CheckpointError:
        """One line for a corrupt checkpoint (orbax's own message runs to tens of lines of
        TensorStore spec): the folder, the exception's type, and how to go on."""
        older = [s for s in self.all_steps() if s < step]
        hint = (f"remove that folder to resume from the checkpoint before it (step {max(older)})"
                if older else "remove that folder to start the run again")
        return CheckpointError(f"{what} ({type(error).__name__}): it is corrupt or truncated; {hint}, "
                               "or use another workdir", source=str(self.directory / str(step)))

    def close(self) -> None:
        self._manager.close()
