"""Thin gRPC servicers: read the call, hand it to the domain, map errors (coordinator.errors)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

from coordinator.access import AccessControl
from coordinator.admin import AdminService
from coordinator.errors import maps_domain_errors
from coordinator.federation import FederationService
from coordinator.run_creation import spec_from_request
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
    """The Federation service over gRPC: authenticate the node, then one call into the domain."""

    def __init__(self, domain: FederationService) -> None:
        self.domain = domain

    def _node(self, context: grpc.ServicerContext) -> str:
        return self.domain.sites.authenticate(bearer_token(context))

    async def _node_async(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """:meth:`_node` for a coroutine: the credential check may query, so on the pool."""
        token = bearer_token(context)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.domain.sites.authenticate, token)

    @maps_domain_errors
    def Join(
        self, request: federation_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> federation_pb2.JoinReply:
        return self.domain.sites.join(request)

    @maps_domain_errors
    def Heartbeat(
        self, request: federation_pb2.HeartbeatRequest, context: grpc.ServicerContext
    ) -> federation_pb2.HeartbeatReply:
        return self.domain.sites.heartbeat(self._node(context))

    @maps_domain_errors
    async def PullTask(
        self, request: federation_pb2.PullTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> federation_pb2.Task:
        # A coroutine: a parked poll holds no thread (coordinator/handout.py).
        node_id = await self._node_async(context)
        return await self.domain.tasks.pull_task(node_id, request.wait_seconds)

    @maps_domain_errors
    def FetchModel(
        self, request: federation_pb2.FetchModelRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Chunk]:
        payload = self.domain.tasks.fetch_model(self._node(context), request.run_id, request.sha256)
        yield from wire.chunk_stream(payload)

    @maps_domain_errors
    def SubmitUpdate(
        self,
        request_iterator: Iterator[federation_pb2.UpdateMessage],
        context: grpc.ServicerContext,
    ) -> federation_pb2.SubmitReply:
        return self.domain.submit_update(self._node(context), iter(request_iterator))

    @maps_domain_errors
    def SubmitKeys(
        self, request: federation_pb2.KeyBundle, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.keys.submit_keys(self._node(context), request)

    @maps_domain_errors
    def SubmitAudit(
        self, request: federation_pb2.AuditSubmission, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.statements.submit_audit(self._node(context), request)

    @maps_domain_errors
    def RefuseTask(
        self, request: federation_pb2.TaskRefusal, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.statements.refuse(self._node(context), request)

    @maps_domain_errors
    def GetFinalModel(
        self, request: federation_pb2.FinalModelRequest, context: grpc.ServicerContext
    ) -> federation_pb2.Task:
        return self.domain.tasks.final_model(self._node(context), request.run_id)

    @maps_domain_errors
    def SubmitPartials(
        self, request: federation_pb2.PartialSubmission, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.keys.submit_partials(self._node(context), request)

    @maps_domain_errors
    async def FetchPartials(
        self,
        request: federation_pb2.PartialFetchRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> federation_pb2.PartialFetchReply:
        # A coroutine like PullTask: a threshold round's polls hold no thread.
        return await self.domain.keys.fetch_partials(await self._node_async(context), request)

    @maps_domain_errors
    def ReportPartial(
        self, request: federation_pb2.PartialComplaint, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.keys.report_partial(self._node(context), request)

    @maps_domain_errors
    def LedgerSubmit(
        self, request: federation_pb2.LedgerEntry, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.statements.ledger_entry(self._node(context), request)

    @maps_domain_errors
    def SubmitEcho(
        self, request: federation_pb2.EchoSubmission, context: grpc.ServicerContext
    ) -> federation_pb2.SubmitReply:
        return self.domain.keys.submit_echo(self._node(context), request)

    @maps_domain_errors
    async def FetchEchoes(
        self, request: federation_pb2.EchoFetchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> federation_pb2.EchoFetchReply:
        return await self.domain.keys.fetch_echoes(await self._node_async(context), request)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Every call first passes the role check (coordinator.access) with its RPC name."""

    def __init__(self, domain: AdminService, access: AccessControl) -> None:
        self.domain = domain
        self.access = access

    def _actor(self, context: grpc.ServicerContext, rpc: str) -> str:
        name = self.access.authorise(bearer_token(context), rpc)
        return actor_of(context) if name == "operator" else name

    @maps_domain_errors
    def CreateRun(
        self, request: admin_pb2.CreateRunRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RunInfo:
        actor = self._actor(context, "CreateRun")
        return self.domain.creation.create(spec_from_request(request, actor))

    @maps_domain_errors
    def ListRuns(
        self, request: admin_pb2.ListRunsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRunsReply:
        self._actor(context, "ListRuns")
        return self.domain.list_runs()

    @maps_domain_errors
    def GetRun(
        self, request: admin_pb2.GetRunRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RunInfo:
        self._actor(context, "GetRun")
        return self.domain.get_run(request.run_id)

    @maps_domain_errors
    def StopRun(
        self, request: admin_pb2.StopRunRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RunInfo:
        actor = self._actor(context, "StopRun")
        return self.domain.stop_run(request.run_id, request.reason, actor)

    @maps_domain_errors
    async def WatchRun(
        self, request: admin_pb2.GetRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[admin_pb2.RunEvent]:
        # An async generator: a watch waits on the event loop, not on a thread.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._actor, context, "WatchRun")
        async for event in self.domain.watch_run(request.run_id):
            yield event

    @maps_domain_errors
    def DownloadModel(
        self, request: admin_pb2.DownloadModelRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Chunk]:
        actor = self._actor(context, "DownloadModel")
        payload = self.domain.exports.model_payload(request.run_id, request.round, actor)
        yield from wire.chunk_stream(payload)

    @maps_domain_errors
    def DashboardWhoAmI(
        self, request: admin_pb2.DashboardWhoAmIRequest, context: grpc.ServicerContext
    ) -> admin_pb2.DashboardWhoAmIReply:
        name = self._actor(context, "DashboardWhoAmI")
        return admin_pb2.DashboardWhoAmIReply(
            name=name, role=self.access.role_of(bearer_token(context))
        )

    @maps_domain_errors
    def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListNodesReply:
        self._actor(context, "ListNodes")
        return self.domain.list_nodes()

    @maps_domain_errors
    def GetAuditLog(
        self, request: admin_pb2.GetAuditLogRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AuditLog:
        self._actor(context, "GetAuditLog")
        return self.domain.exports.audit_log(request.after_seq, request.limit)

    @maps_domain_errors
    def RevokeSite(
        self, request: admin_pb2.RevokeRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeReply:
        actor = self._actor(context, "RevokeSite")
        count = self.access.revoke_site(request.name, request.reason, actor)
        return admin_pb2.RevokeReply(revoked=count)

    @maps_domain_errors
    def RevokeOperator(
        self, request: admin_pb2.RevokeRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeReply:
        actor = self._actor(context, "RevokeOperator")
        count = self.access.revoke_operator(request.name, request.reason, actor)
        return admin_pb2.RevokeReply(revoked=count)

    @maps_domain_errors
    def ExportReport(
        self, request: admin_pb2.ExportReportRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.Chunk]:
        actor = self._actor(context, "ExportReport")
        payload = self.domain.exports.export_report(request.run_id, request.format, actor)
        yield from wire.chunk_stream(payload)

    @maps_domain_errors
    def GetMetrics(
        self, request: admin_pb2.GetMetricsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.MetricsReply:
        self._actor(context, "GetMetrics")
        return self.domain.metrics()

    @maps_domain_errors
    def EnrolSite(
        self, request: admin_pb2.EnrolSiteRequest, context: grpc.ServicerContext
    ) -> admin_pb2.EnrolSiteReply:
        actor = self._actor(context, "EnrolSite")
        token, expires = self.access.enrol_site(
            request.site_name, request.ttl_seconds or 86400, actor
        )
        return admin_pb2.EnrolSiteReply(token=token, expires_unix=expires)

    @maps_domain_errors
    def AddOperator(
        self, request: admin_pb2.AddOperatorRequest, context: grpc.ServicerContext
    ) -> admin_pb2.AddOperatorReply:
        actor = self._actor(context, "AddOperator")
        return admin_pb2.AddOperatorReply(
            token=self.access.add_operator(request.name, request.role, actor)
        )


__all__ = ["AdminServicer", "FederationServicer", "federation_pb2"]
