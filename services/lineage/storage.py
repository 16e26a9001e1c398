"""The lineage store's contract, independent of the database behind it.

Like Optuna's storage layer: this abstract class says what a store does; `rdb.py`
does it with SQLAlchemy. Records go in and come out as the gRPC messages of
`evo.v1.lineage`, so the service layer only translates errors.
"""

from abc import ABC, abstractmethod

from evo.v1 import lineage_pb2 as pb

# Documented caps (README "Limits"): larger input is refused with INVALID_ARGUMENT.
MAX_CODE_BYTES = 256 * 1024
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TEXT_BYTES = 1024 * 1024  # prompts and raw completions
MAX_NAME_CHARS = 200
MAX_PARENTS = 64
MAX_PAGE_SIZE = 1000
# Log tails are tails: longer ones are cut to their last bytes, not refused.
MAX_LOG_TAIL_BYTES = 64 * 1024


class StoreError(Exception):
    """Base of the errors a caller can act on; the message names the fix."""


class NotFound(StoreError):
    pass


class InvalidArgument(StoreError):
    pass


class LineageStorage(ABC):
    """Every search, round, prompt, candidate, parent link and evaluation.

    All `record_*` methods are idempotent on the key their request message
    documents and return `(record, created)`.
    """

    # Searches.
    @abstractmethod
    def create_search(self, req: pb.CreateSearchRequest) -> tuple[pb.Search, bool]: ...

    @abstractmethod
    def get_search(self, search_id: int) -> pb.Search: ...

    @abstractmethod
    def list_searches(self, page_size: int, page_token: str) -> tuple[list[pb.Search], str]: ...

    @abstractmethod
    def update_search_state(self, req: pb.UpdateSearchStateRequest) -> pb.Search: ...

    # Writes during a search.
    @abstractmethod
    def record_round(self, req: pb.RecordRoundRequest) -> pb.Round: ...

    @abstractmethod
    def record_prompt(self, req: pb.RecordPromptRequest) -> tuple[pb.Prompt, bool]: ...

    @abstractmethod
    def record_candidate(self, req: pb.RecordCandidateRequest) -> tuple[pb.Candidate, bool]: ...

    @abstractmethod
    def record_evaluation(self, req: pb.RecordEvaluationRequest) -> tuple[pb.Candidate, bool]: ...

    # Reads.
    @abstractmethod
    def get_prompt(self, prompt_id: int) -> pb.Prompt: ...

    @abstractmethod
    def get_candidate(self, candidate_id: int) -> pb.Candidate: ...

    @abstractmethod
    def list_candidates(self, req: pb.ListCandidatesRequest) -> tuple[list[pb.Candidate], str]: ...

    @abstractmethod
    def list_rounds(self, search_id: int) -> list[pb.Round]: ...

    @abstractmethod
    def get_population(self, req: pb.GetPopulationRequest) -> list[pb.Candidate]: ...

    @abstractmethod
    def get_ancestors(self, candidate_id: int, max_depth: int) -> list[pb.LineageEntry]: ...

    @abstractmethod
    def get_descendants(self, candidate_id: int, max_depth: int) -> list[pb.LineageEntry]: ...

    @abstractmethod
    def get_pareto_front(self, search_id: int, metric: int) -> list[pb.ParetoPoint]: ...

    @abstractmethod
    def get_round_stats(self, search_id: int) -> list[pb.RoundStats]: ...
