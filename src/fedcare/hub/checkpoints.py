"""A study's checkpoints at the hub: two blobs and the study's database row.

The hub's :class:`~fedcare.engine.checkpoints.CheckpointSink`: the same record as a
simulation's files (:class:`~fedcare.engine.checkpoints.Checkpoint`), resumed through the
same :meth:`~fedcare.engine.round_engine.RoundEngine.resume`. The format is the one hubs
have always written, so a study checkpointed by an earlier hub still resumes: the round's
model in one blob (``studies.global_model``), the strategy's state with the history so far
(in its ``history`` metadata) in another (``studies.strategy_state``), and the round
completed in ``studies.current_round`` - all three in ONE transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from fedcare.core.errors import FedcareError, ValidationError
from fedcare.core.params import Parameters
from fedcare.core.wire import load_parameters, save_parameters
from fedcare.engine.checkpoints import Checkpoint
from fedcare.engine.history import History
from fedcare.hub.store import BlobStore, Database, StudyRepo


class BlobCheckpoints:
    """Stores the round's model and state as blobs, then completes the round in ONE
    transaction: a crash before the commit replays the round, after it resumes past it.

    ``withdraw`` stops offering the tasks whose id starts with the prefix it is given (the
    round's unanswered tasks expire with the round)."""

    def __init__(self, blobs: BlobStore, db: Database, study_id: str, *,
                 withdraw: Callable[[str], None] | None = None) -> None:
        self.blobs, self.db, self.study_id = blobs, db, study_id
        self.withdraw = withdraw

    def save(self, round_: int, parameters: Parameters, strategy_state: Mapping[str, Any],
             history: History) -> None:
        model_sha = self.blobs.put(save_parameters(parameters))
        # The strategy's state and the history so far, in one blob beside the model.
        state_sha = self.blobs.put(save_parameters(Parameters({}), extra=strategy_state,
                                                   metadata={"history": json.dumps(
                                                       history.to_dict())}))
        with self.db.session() as s:
            repo = StudyRepo(s)
            repo.complete_round(self.study_id, round_, asdict(history.rounds[-1]),
                                model_sha, state_sha)
            if len(history.rounds) > 1:  # the previous round's model, evaluated this round
                previous = history.rounds[-2]
                repo.update_record(self.study_id, previous.round, asdict(previous))
        if self.withdraw is not None:
            self.withdraw(f"{self.study_id}/r{round_}/")

    def latest(self) -> Checkpoint | None:
        """The study's last completed round (None: none completed yet)."""
        with self.db.session() as s:
            study = StudyRepo(s).get(self.study_id)
            if study is None:
                raise FedcareError(f"no study {self.study_id!r}")
            current, model_sha, state_sha = (study.current_round, study.global_model,
                                             study.strategy_state)
        if current <= 0 or not model_sha or not state_sha:
            return None
        try:
            parameters = load_parameters(self.blobs.get(model_sha)).parameters
            stored = load_parameters(self.blobs.get(state_sha))
            history = History.from_dict(json.loads(stored.metadata["history"]))
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise FedcareError(f"study {self.study_id}: the checkpoint of round {current} is "
                               f"unreadable: {exc}") from exc
        return Checkpoint(current, parameters, stored.extra, history)
