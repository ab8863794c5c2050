"""Thin gRPC servicers: read the call, hand it to the domain, map errors (coordinator.errors)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from coordinator.access import AccessControl
from coordinator.admin import AdminService, spec_from_request
from coordinator.errors import maps_domain_errors
from coordinator.federation import FederationService
from protos import admin_pb2, admin_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc, wire


def bearer_token(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == wire.NODE_TOKEN_HEADER and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token if scheme.lower() == "bearer" else None
    return None


def actor_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "x-cohort-user" and isinstance(value, str):
            return value[:128]
    return "operator"


class FederationServicer(federation_pb2_grpc.FederationServicer):
    def __init__(self, domain: FederationService) -> None:
        self.domain = domain

    def _node(self, context: grpc.ServicerContext) -> str:
        return self.domain.authenticate(bearer_token(context))

    @maps_domain_errors
    def Join(self, request, context):
        return self.domain.join(request)

    @maps_domain_errors
    def Heartbeat(self, request, context):
        return self.domain.heartbeat(self._node(context))

    @maps_domain_errors
    def PullTask(self, request, context):
        return self.domain.pull_task(self._node(context), request.wait_seconds, context.is_active)

    @maps_domain_errors
    def FetchModel(self, request, context):
        payload = self.domain.fetch_model(self._node(context), request.run_id, request.sha256)
        yield from wire.chunk_stream(payload)

    @maps_domain_errors
    def SubmitUpdate(self, request_iterator, context):
        return self.domain.submit_update(self._node(context), iter(request_iterator))

    @maps_domain_errors
    def SubmitKeys(self, request, context):
        return self.domain.submit_keys(self._node(context), request)

    @maps_domain_errors
    def SubmitAudit(self, request, context):
        return self.domain.submit_audit(self._node(context), request)

    @maps_domain_errors
    def RefuseTask(self, request, context):
        return self.domain.refuse(self._node(context), request)

    @maps_domain_errors
    def GetFinalModel(self, request, context):
        return self.domain.final_model(self._node(context), request.run_id)

    @maps_domain_errors
    def LedgerSubmit(self, request, context):
        return self.domain.ledger_entry(self._node(context), request)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Every call first passes the role check (coordinator.access) with its RPC name."""

    def __init__(self, domain: AdminService, access: AccessControl) -> None:
        self.domain = domain
        self.access = access

    def _actor(self, context: grpc.ServicerContext, rpc: str) -> str:
        name = self.access.authorise(bearer_token(context), rpc)
        return actor_of(context) if name == "operator" else name

    @maps_domain_errors
    def CreateRun(self, request, context):
        actor = self._actor(context, "CreateRun")
        return self.domain.create_run(spec_from_request(request, actor))

    @maps_domain_errors
    def ListRuns(self, request, context):
        self._actor(context, "ListRuns")
        return self.domain.list_runs()

    @maps_domain_errors
    def GetRun(self, request, context):
        self._actor(context, "GetRun")
        return self.domain.get_run(request.run_id)

    @maps_domain_errors
    def StopRun(self, request, context):
        actor = self._actor(context, "StopRun")
        return self.domain.stop_run(request.run_id, request.reason, actor)

    @maps_domain_errors
    def WatchRun(self, request, context) -> Iterator[admin_pb2.RunEvent]:
        self._actor(context, "WatchRun")
        yield from self.domain.watch_run(request.run_id, context.is_active)

    @maps_domain_errors
    def DownloadModel(self, request, context) -> Iterator[common_pb2.Chunk]:
        actor = self._actor(context, "DownloadModel")
        payload = self.domain.model_payload(request.run_id, request.round, actor)
        yield from wire.chunk_stream(payload)

    @maps_domain_errors
    def ListNodes(self, request, context):
        self._actor(context, "ListNodes")
        return self.domain.list_nodes()

    @maps_domain_errors
    def GetAuditLog(self, request, context):
        self._actor(context, "GetAuditLog")
        return self.domain.audit_log(request.after_seq, request.limit)

    @maps_domain_errors
    def RevokeSite(self, request, context):
        actor = self._actor(context, "RevokeSite")
        count = self.access.revoke_site(request.name, request.reason, actor)
        return admin_pb2.RevokeReply(revoked=count)

    @maps_domain_errors
    def RevokeOperator(self, request, context):
        actor = self._actor(context, "RevokeOperator")
        count = self.access.revoke_operator(request.name, request.reason, actor)
        return admin_pb2.RevokeReply(revoked=count)

    @maps_domain_errors
    def ExportReport(self, request, context) -> Iterator[common_pb2.Chunk]:
        actor = self._actor(context, "ExportReport")
        payload = self.domain.export_report(request.run_id, request.format, actor)
        yield from wire.chunk_stream(payload)

    @maps_domain_errors
    def GetMetrics(self, request, context):
        self._actor(context, "GetMetrics")
        return self.domain.metrics()

    @maps_domain_errors
    def EnrolSite(self, request, context):
        actor = self._actor(context, "EnrolSite")
        token, expires = self.access.enrol_site(
            request.site_name, request.ttl_seconds or 86400, actor
        )
        return admin_pb2.EnrolSiteReply(token=token, expires_unix=expires)

    @maps_domain_errors
    def AddOperator(self, request, context):
        actor = self._actor(context, "AddOperator")
        return admin_pb2.AddOperatorReply(
            token=self.access.add_operator(request.name, request.role, actor)
        )


__all__ = ["AdminServicer", "FederationServicer", "federation_pb2"]
