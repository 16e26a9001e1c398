"""The child protocol's bounded reading side, without sandboxes: frames, bundles, outcomes,
the trusted parser's time budget, and the control-character escaper."""

import io
import json
import math
import struct
import time

import numpy as np
import pytest
from evo.v1 import common_pb2 as common
from evo.v1 import trainer_pb2 as pb

from services.common.text import escape_controls, escaped_tail
from services.trainer import protocol
from services.trainer.evaluator import Job, Refused, read_checkpoints, schedule, score
from services.trainer.protocol import ProtocolError
from services.trainer.sandbox.base import MIB, FrameReader, Limits, Spool

CODE = "import torch.nn as nn\nbuild_model = lambda: nn.Linear(40, 10)\n"


def frame(kind: bytes, payload: bytes) -> bytes:
    return protocol.FRAME.pack(kind, len(payload)) + payload


def end(**fields: object) -> bytes:
    return frame(protocol.END, json.dumps({"status": "OK", "stage": "done", **fields}).encode())


def checkpoint(loss: float, state: dict[str, np.ndarray]) -> bytes:
    return frame(protocol.CHECKPOINT, b"".join(protocol.checkpoint_parts(loss, state)))


def read(stream: bytes, cap: int = 64 * MIB, **kw: object) -> FrameReader:
    kw.setdefault("on_progress", None)
    reader = FrameReader(io.BytesIO(stream), cap, **kw)  # type: ignore[arg-type]
    reader()
    return reader


def job(steps: int = 20, eval_every: int = 10, max_params: int = 0) -> Job:
    request = pb.EvaluateRequest(
        program=pb.Program(code=CODE),
        budget=pb.Budget(steps=steps, eval_every=eval_every),
        limits=pb.Limits(max_params=max_params),
    )
    return Job.from_request(request, Limits())


def test_bundles_round_trip_and_refuse_what_breaks_their_bounds() -> None:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([7], np.int64)}
    data = protocol.encode_bundle(state)
    back = protocol.read_bundle(io.BytesIO(data), len(data))
    assert list(back) == ["w", "n"] and np.array_equal(back["w"], state["w"])

    def bundle(entries: object, extra: bytes = b"") -> bytes:
        head = json.dumps(entries).encode()
        return struct.pack("<Q", len(head)) + head + extra

    bad = {
        "not JSON": struct.pack("<Q", 3) + b"{{{",
        "at most": bundle([["t", "float32", [1]]] * (protocol.MAX_TENSORS + 1)),
        "type": bundle([["t", "float64", [1]]], b"\0" * 8),
        "malformed shape": bundle([["t", "float32", [0, 5]]]),
        "repeated": bundle([["t", "float32", [1]], ["t", "float32", [1]]], b"\0" * 8),
        "does not match": bundle([["t", "float32", [4]]], b"\0" * 3),
        "claims": struct.pack("<Q", 1 << 40),
    }
    for why, raw in bad.items():
        with pytest.raises(ProtocolError, match=why):
            protocol.read_bundle(io.BytesIO(raw), len(raw))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'[["status", "OK"]]', "not an object"),
        (b'{"status": "OK", "stage": "done", "num_params": 1, "steps": 50000}', "unknown"),
        (b'{"status": "GREAT", "stage": "done"}', "unknown status"),
        (b'{"status": "OK", "stage": "done", "num_params": NaN}', "count"),
        (b"\xff\xfe", "not JSON"),
        (b'{"status": "OK", "stage": "' + b"x" * 9000 + b'"}', "over"),
    ],
)
def test_outcomes_are_an_allow_list(payload: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        protocol.Outcome.decode(payload)


def test_jobs_carry_a_valid_schedule_only() -> None:
    assert schedule(100, 5)[-1] == 100 and schedule(10, 3) == (3, 6, 9, 10)
    with pytest.raises(ValueError, match="schedule"):
        protocol.ChildJob(
            phase="train", runner="torch", code="", seed=0, steps=10, checkpoint_steps=(5, 20),
            batch_size=1, lr=0.1, num_classes=10, threads=1, max_params=0,
            rlimits=protocol.Rlimits(),
        )  # fmt: skip
    with pytest.raises(Exception, match="more than 100 checkpoints"):
        job(steps=8000, eval_every=1)


def test_the_frame_reader_bounds_progress_and_spools_the_rest() -> None:
    delivered: list[bytes] = []
    good = frame(protocol.PROGRESS, protocol.progress_payload(1, 0.5))
    stream = good * 5000 + checkpoint(0.5, {"w": np.ones(3, np.float32)}) + end()
    reader = read(stream, on_progress=delivered.append)
    assert reader.result is not None and not reader.violation
    assert reader.progress_frames == 5000
    assert len(delivered) <= 2 * protocol.PROGRESS_PER_SECOND  # a flood is dropped
    assert [f.kind for f in reader.result.frames] == [protocol.CHECKPOINT, protocol.END]
    reader.result.close()

    huge = protocol.FRAME.pack(protocol.PROGRESS, 96 << 20) + b"\0" * (1 << 20)
    stopped: list[bool] = []
    reader = read(huge + end(), on_violation=lambda: stopped.append(True))
    assert reader.result is None and "progress frame" in reader.violation and stopped

    many = checkpoint(0.0, {"w": np.ones(1, np.float32)}) * (protocol.MAX_CHECKPOINTS + 5)
    assert "more than 100 checkpoint" in read(many + end()).violation
    assert "result limit" in read(checkpoint(0.0, {"w": np.ones(1000, np.float32)}), 100).violation
    assert "unknown kind" in read(frame(b"R", b"PK\3\4") + end()).violation


def spool_of(stream: bytes) -> Spool:
    reader = read(stream)
    assert reader.result is not None, reader.violation
    return reader.result


def refused(call: object, *args: object) -> Refused:
    with pytest.raises(Refused) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


def test_the_trusted_side_takes_the_schedule_and_the_count_from_itself() -> None:
    j = job(steps=20, eval_every=10)
    w = {"w": np.ones((10, 40), np.float32), "b": np.zeros(10, np.float32)}
    checkpoints = read_checkpoints(j, spool_of(checkpoint(0.5, w) * 2 + end()))
    assert checkpoints.num_params == 410 and checkpoints.losses == [0.5, 0.5]

    r = refused(read_checkpoints, j, spool_of(checkpoint(0.5, w) * 3 + end()))
    assert (
        r.status == common.EVAL_STATUS_CRASHED and "3 checkpoints for a schedule of 2" in r.message
    )
    r = refused(read_checkpoints, j, spool_of(checkpoint(math.nan, w) * 2 + end()))
    assert "loss of nan" in r.message
    other = {"w": np.ones((10, 40), np.float32)}
    r = refused(read_checkpoints, j, spool_of(checkpoint(0.5, w) + checkpoint(0.5, other) + end()))
    assert "other tensors" in r.message
    r = refused(read_checkpoints, job(max_params=100), spool_of(checkpoint(0.5, w) * 2 + end()))
    assert r.status == common.EVAL_STATUS_REJECTED and "410 parameters" in r.message

    # Names never reach the scoring run: they could carry what the count does not.
    assert b'"w"' not in checkpoints.header and b'"0"' in checkpoints.header


def test_a_result_of_300000_members_is_refused_in_well_under_a_second() -> None:
    j = job()
    j.task.dataset()  # loaded before any result arrives (the training job carries it)
    head = json.dumps([[f"m{i}", "float32", [1]] for i in range(300_000)]).encode()
    payload = protocol.LOSS.pack(0.0) + struct.pack("<Q", len(head)) + head + b"\0" * 1_200_000
    spool = spool_of(frame(protocol.CHECKPOINT, payload) * 2 + end())
    started = time.monotonic()
    r = refused(read_checkpoints, j, spool)
    assert time.monotonic() - started < 1.0 and "malformed" in r.message

    # Predictions: 20 frames of 10,000 members each, against a spec of one member.
    w = {"w": np.ones(4, np.float32)}
    good = read_checkpoints(j, spool_of(checkpoint(0.1, w) * 2 + end()))
    members = {f"val.x{i}": np.zeros(1, np.int16) for i in range(protocol.MAX_TENSORS)}
    flood = spool_of(
        frame(protocol.PREDICTIONS, protocol.encode_bundle(members)) * 2 + end(num_params=4)
    )
    started = time.monotonic()
    r = refused(score, j, flood, good, 1.0)
    assert time.monotonic() - started < 1.0 and "prediction frame 0 holds" in r.message


def test_scores_are_computed_from_predictions_and_held_back_labels() -> None:
    j = job()
    data = j.task.dataset()
    w = {"w": np.ones(4, np.float32)}
    checkpoints = read_checkpoints(j, spool_of(checkpoint(0.25, w) * 2 + end()))
    right = {"val.labels": data.val.y.astype(np.int16)}
    last = {**right, "test.labels": data.test.y.astype(np.int16)}
    stream = frame(protocol.PREDICTIONS, protocol.encode_bundle(right))
    stream += frame(protocol.PREDICTIONS, protocol.encode_bundle(last))
    result = score(j, spool_of(stream + end(num_params=4)), checkpoints, 2.5)
    m = result.metrics
    assert (m.test_accuracy, m.best_val_accuracy, m.num_params) == (1.0, 1.0, 4)
    assert (m.steps_completed, m.train_seconds) == (20, 2.5)
    assert [p.step for p in m.val_curve] == [10, 20]
    # The rebuilt model must hold what the checkpoints hold.
    r = refused(score, j, spool_of(stream + end(num_params=3)), checkpoints, 2.5)
    assert "rebuilt" in r.message


def test_control_characters_are_escaped() -> None:
    raw = "ok\tline\n\x1b[2J\x1b]52;c;aGk=\x07\x9b31m\r\u202eevil\x7f"
    shown = escape_controls(raw)
    assert shown == "ok\tline\n\\x1b[2J\\x1b]52;c;aGk=\\x07\\x9b31m\\x0d\\u202eevil\\x7f"
    assert len(escaped_tail("\x1b" * 10_000, 1024).encode()) <= 1024
