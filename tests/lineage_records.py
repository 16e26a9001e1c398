"""Small builders for lineage records, shared by the store, service and CLI tests."""

from evo.v1 import common_pb2 as common
from evo.v1 import lineage_pb2 as pb

from controller import population


def new_search(
    name: str = "s", config: str = '{"rounds": 2}', token: str = ""
) -> pb.CreateSearchRequest:
    return pb.CreateSearchRequest(
        name=name, task="mnist1d", method="evoprompting", config_json=config, client_token=token
    )


def seed(search_id: int, code: str, index: int = 0) -> pb.RecordCandidateRequest:
    return pb.RecordCandidateRequest(
        search_id=search_id,
        origin=pb.CANDIDATE_ORIGIN_SEED,
        sample_index=index,
        name=f"seed{index}",
        code=code,
    )


def child(
    search_id: int,
    code: str,
    parents: list[int],
    *,
    round_index: int = 1,
    prompt_id: int = 0,
    sample: int = 0,
) -> pb.RecordCandidateRequest:
    return pb.RecordCandidateRequest(
        search_id=search_id,
        round_index=round_index,
        origin=pb.CANDIDATE_ORIGIN_LANGUAGE_MODEL,
        prompt_id=prompt_id,
        sample_index=sample,
        parent_ids=parents,
        code=code,
        raw_completion=code,
        proposer=pb.ProposerSettings(
            backend="hf",
            model_id="smollm2-135m",
            sampling=common.SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=256),
        ),
        prompt_tokens=100,
        completion_tokens=50,
    )


def ok_eval(candidate_id: int, params: int, error: float, test_acc: float | None = None):  # type: ignore[no-untyped-def]
    metrics = common.Metrics(
        num_params=params,
        best_val_error=error,
        best_val_accuracy=1 - error,
        steps_completed=100,
        val_curve=[common.CurvePoint(step=50, train_loss=1.0, val_accuracy=0.5, val_error=0.5)],
    )
    if test_acc is not None:
        metrics.test_accuracy = test_acc
    return pb.RecordEvaluationRequest(
        candidate_id=candidate_id,
        fitness=population.fitness(params, error),  # the controller computes it
        evaluation=pb.Evaluation(
            status=common.EVAL_STATUS_OK,
            metrics=metrics,
            task="mnist1d",
            sandbox_backend="bwrap",
            budget_steps=100,
        ),
    )


def failed_eval(candidate_id: int, status: int, message: str) -> pb.RecordEvaluationRequest:
    return pb.RecordEvaluationRequest(
        candidate_id=candidate_id,
        evaluation=pb.Evaluation(status=status, message=message, log_tail="Traceback..."),
    )


def program(n: int) -> str:
    """A distinct valid program for each n."""
    return f"class Model(nn.Module):\n    def __init__(self):\n        self.width = {n}\n"
