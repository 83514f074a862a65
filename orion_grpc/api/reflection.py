"""Server reflection for grpcurl & co: protocol v1 *and* v1alpha, method symbols included.

grpcio-reflection serves only ``grpc.reflection.v1alpha`` and asks the descriptor pool for
``FindFileContainingSymbol``, which (upb) cannot resolve a method such as
``orion.v1.OrchestratorService.OrchestrateOrion`` or an enum value scoped by its enum — so
``grpcurl describe`` of a method fails against a plain grpcio server. This servicer answers
both protocol versions from one implementation and resolves service, method, message, field,
enum and enum-value symbols. ``file_containing_extension`` is NOT_FOUND (the contract defines
no extensions); ``all_extension_numbers_of_type`` answers an empty list for known messages.
The orion.v1 files are served with their comments (so ``describe`` shows the API docs).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

from ._reflection import reflection_v1_pb2 as v1_pb2

logger = logging.getLogger(__name__)

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
METHOD = "ServerReflectionInfo"


class SymbolResolver:
    """Finds the file declaring a symbol, including the cases upb's pool does not."""

    def __init__(self, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self.pool = pool or descriptor_pool.Default()

    def file_containing_symbol(self, symbol: str) -> FileDescriptor:
        pool = self.pool
        try:
            return pool.FindFileContainingSymbol(symbol)
        except KeyError:
            pass
        parent, _, leaf = symbol.rpartition(".")
        if parent:
            try:
                service = pool.FindServiceByName(parent)
            except KeyError:
                service = None
            if service is not None and leaf in service.methods_by_name:
                return service.file
            try:
                enum = pool.FindEnumTypeByName(parent)
            except KeyError:
                enum = None
            if enum is not None and leaf in enum.values_by_name:
                return enum.file
            try:
                message = pool.FindMessageTypeByName(parent)
            except KeyError:
                message = None
            if message is not None and (leaf in message.fields_by_name
                                        or leaf in message.oneofs_by_name):
                return message.file
        raise KeyError(symbol)

    def file_by_name(self, name: str) -> FileDescriptor:
        return self.pool.FindFileByName(name)

    def extension_numbers(self, type_name: str) -> tuple[str, list[int]]:
        message = self.pool.FindMessageTypeByName(type_name)
        return message.full_name, sorted(ext.number for ext in self.pool.FindAllExtensions(message))


SOURCE_INFO = "orion_v1_source_info.binpb"


def _normalized(proto: descriptor_pb2.FileDescriptorProto) -> bytes:
    """A file descriptor without comments and json names (what upb's CopyToProto omits)."""
    copy = descriptor_pb2.FileDescriptorProto()
    copy.CopyFrom(proto)
    copy.ClearField("source_code_info")

    def strip(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
        for message in messages:
            for f in (*message.field, *message.extension):
                f.ClearField("json_name")
            strip(message.nested_type)

    strip(copy.message_type)
    for f in copy.extension:
        f.ClearField("json_name")
    return copy.SerializeToString(deterministic=True)


class _Annotated:
    """The orion.v1 files compiled with their comments (scripts/gen_reflection_v1.py), served
    instead of the comment-less descriptors of the generated code when they match them."""

    def __init__(self) -> None:
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._verified: dict[str, bytes | None] = {}
        try:
            data = resources.files("orion_grpc.api._reflection").joinpath(SOURCE_INFO).read_bytes()
        except (FileNotFoundError, ModuleNotFoundError):
            return
        for proto in descriptor_pb2.FileDescriptorSet.FromString(data).file:
            self._files[proto.name] = proto

    def serialized(self, file: FileDescriptor) -> bytes:
        live = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(live)
        annotated = self._files.get(file.name)
        if annotated is None:
            return live.SerializeToString()
        if file.name not in self._verified:
            same = _normalized(annotated) == _normalized(live)
            if not same:
                logger.warning("%s differs from the served contract (regenerate with "
                               "scripts/gen_reflection_v1.py); serving it without comments",
                               file.name)
            self._verified[file.name] = annotated.SerializeToString() if same else None
        return self._verified[file.name] or live.SerializeToString()


def _with_dependencies(file: FileDescriptor, annotated: _Annotated) -> list[bytes]:
    """The file and everything it imports, dependencies first, each once."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(f: FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        ordered.append(f)

    visit(file)
    ordered.reverse()  # the requested file first, as grpcurl and grpcio expect
    return [annotated.serialized(f) for f in ordered]


class ReflectionServicer:
    """One implementation, registered under both protocol names."""

    def __init__(self, service_names: Iterable[str],
                 pool: descriptor_pool.DescriptorPool | None = None) -> None:
        self.service_names = sorted(set(service_names) | {V1_SERVICE, V1ALPHA_SERVICE})
        self.resolver = SymbolResolver(pool)
        self.annotated = _Annotated()

    def _answer(self, pb: ModuleType, request: Any) -> Any:
        response = pb.ServerReflectionResponse(valid_host=request.host)
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                for name in self.service_names:
                    response.list_services_response.service.add(name=name)
            elif kind == "file_by_filename":
                files = _with_dependencies(self.resolver.file_by_name(request.file_by_filename),
                                           self.annotated)
                response.file_descriptor_response.file_descriptor_proto.extend(files)
            elif kind == "file_containing_symbol":
                file = self.resolver.file_containing_symbol(request.file_containing_symbol)
                response.file_descriptor_response.file_descriptor_proto.extend(
                    _with_dependencies(file, self.annotated))
            elif kind == "file_containing_extension":
                raise KeyError(request.file_containing_extension.containing_type)
            elif kind == "all_extension_numbers_of_type":
                base, numbers = self.resolver.extension_numbers(
                    request.all_extension_numbers_of_type)
                response.all_extension_numbers_response.base_type_name = base
                response.all_extension_numbers_response.extension_number.extend(numbers)
            else:
                response.error_response.error_code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                response.error_response.error_message = "no request set in message_request"
        except KeyError as exc:
            response.ClearField("message_response")
            response.error_response.error_code = grpc.StatusCode.NOT_FOUND.value[0]
            response.error_response.error_message = f"not found: {exc.args[0] if exc.args else ''}"
        return response

    def _handler(self, pb: ModuleType) -> grpc.RpcMethodHandler:
        async def info(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[Any]:
            async for request in requests:
                yield self._answer(pb, request)

        return grpc.stream_stream_rpc_method_handler(
            info, request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(V1_SERVICE, {METHOD: self._handler(v1_pb2)}),
            grpc.method_handlers_generic_handler(V1ALPHA_SERVICE,
                                                 {METHOD: self._handler(v1alpha_pb2)}),
        ))


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> ReflectionServicer:
    servicer = ReflectionServicer(service_names)
    servicer.add_to_server(server)
    return servicer
