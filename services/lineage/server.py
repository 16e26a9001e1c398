"""The Lineage gRPC service: translates between the wire and the storage."""

import logging

import grpc
from evo.v1 import lineage_pb2 as pb
from evo.v1 import lineage_pb2_grpc as pb_grpc

from services.common import addresses
from services.common import server as grpc_server
from services.lineage.storage import InvalidArgument, LineageStorage, NotFound

log = logging.getLogger(__name__)

DEFAULT_PORT = addresses.DEFAULT_PORTS["lineage"]

_grpc_errors = grpc_server.error_statuses(
    [(NotFound, grpc.StatusCode.NOT_FOUND), (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT)],
    "lineage store",
)


class LineageServicer(pb_grpc.LineageServicer):
    def __init__(self, storage: LineageStorage) -> None:
        self.storage = storage

    @_grpc_errors
    def CreateSearch(self, request, context):
        search, created = self.storage.create_search(request)
        return pb.CreateSearchResponse(search=search, created=created)

    @_grpc_errors
    def GetSearch(self, request, context):
        return self.storage.get_search(request.search_id)

    @_grpc_errors
    def ListSearches(self, request, context):
        searches, token = self.storage.list_searches(request.page_size, request.page_token)
        return pb.ListSearchesResponse(searches=searches, next_page_token=token)

    @_grpc_errors
    def UpdateSearchState(self, request, context):
        return self.storage.update_search_state(request)

    @_grpc_errors
    def RecordRound(self, request, context):
        return self.storage.record_round(request)

    @_grpc_errors
    def RecordPrompt(self, request, context):
        prompt, created = self.storage.record_prompt(request)
        return pb.RecordPromptResponse(prompt=prompt, created=created)

    @_grpc_errors
    def RecordCandidate(self, request, context):
        candidate, created = self.storage.record_candidate(request)
        return pb.RecordCandidateResponse(candidate=candidate, created=created)

    @_grpc_errors
    def RecordEvaluation(self, request, context):
        candidate, created = self.storage.record_evaluation(request)
        return pb.RecordEvaluationResponse(candidate=candidate, created=created)

    @_grpc_errors
    def GetPrompt(self, request, context):
        return self.storage.get_prompt(request.prompt_id)

    @_grpc_errors
    def GetCandidate(self, request, context):
        return self.storage.get_candidate(request.candidate_id)

    @_grpc_errors
    def ListCandidates(self, request, context):
        candidates, token = self.storage.list_candidates(request)
        return pb.ListCandidatesResponse(candidates=candidates, next_page_token=token)

    @_grpc_errors
    def ListRounds(self, request, context):
        return pb.ListRoundsResponse(rounds=self.storage.list_rounds(request.search_id))

    @_grpc_errors
    def GetPopulation(self, request, context):
        return pb.GetPopulationResponse(candidates=self.storage.get_population(request))

    @_grpc_errors
    def GetAncestors(self, request, context):
        entries = self.storage.get_ancestors(request.candidate_id, request.max_depth)
        return pb.GetLineageResponse(entries=entries)

    @_grpc_errors
    def GetDescendants(self, request, context):
        entries = self.storage.get_descendants(request.candidate_id, request.max_depth)
        return pb.GetLineageResponse(entries=entries)

    @_grpc_errors
    def GetParetoFront(self, request, context):
        points = self.storage.get_pareto_front(request.search_id, request.error_metric)
        return pb.GetParetoFrontResponse(points=points)

    @_grpc_errors
    def GetRoundStats(self, request, context):
        return pb.GetRoundStatsResponse(rounds=self.storage.get_round_stats(request.search_id))


def start(storage: LineageStorage, host: str = "127.0.0.1", port: int = DEFAULT_PORT):  # type: ignore[no-untyped-def]
    """Start the Lineage service (plus health and reflection) on host:port."""
    servicer = LineageServicer(storage)
    return grpc_server.start(
        lambda server: pb_grpc.add_LineageServicer_to_server(servicer, server),
        [pb.DESCRIPTOR.services_by_name["Lineage"].full_name],
        host=host,
        port=port,
    )
